package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes"
	kubefake "k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	clocktesting "k8s.io/utils/clock/testing"

	v1alpha1 "github.com/ecs-localdisk/ecs-localdisk-csi/pkg/apis/v1alpha1"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

const node = "node-a"

func fakeDisk(i int, size int64) disk.Disk {
	return disk.Disk{ID: fmt.Sprintf("serial-D%d", i), Identity: fmt.Sprintf("serial:D%d", i), Path: fmt.Sprintf("/dev/vd%c", 'b'+i),
		SizeBytes: size, Media: disk.MediaSSD, Category: "local_ssd_pro"}
}

// fixture is a real inventory over fake devices, a fake API server and a
// mirror between them.
type fixture struct {
	t        *testing.T
	ctx      context.Context
	src      *disk.FakeSource
	m        *mounter.Fake
	inv      *inventory.Inventory
	dyn      *dynamicfake.FakeDynamicClient
	core     *kubefake.Clientset
	recorder *testRecorder
	clock    *clocktesting.FakeClock
	mirror   *Mirror
}

func newFixture(t *testing.T, disks ...disk.Disk) *fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	f := &fixture{t: t, ctx: ctx, src: disk.NewFakeSource(disks...), m: mounter.NewFake(), recorder: &testRecorder{},
		clock: clocktesting.NewFakeClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))}
	for i, d := range disks {
		f.m.AddDevice(d.Path, d.SizeBytes, 253, uint32(i))
	}
	f.inv = inventory.New(inventory.Config{Node: node, Source: f.src, Store: state.NewStore(t.TempDir()), Mounter: f.m, RetryInterval: 10 * time.Millisecond})
	if err := f.inv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.inv.Stop)
	scheme := runtime.NewScheme()
	f.dyn = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(scheme, map[schema.GroupVersionResource]string{v1alpha1.GroupVersionResource: "LocalDiskList"})
	f.core = kubefake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, UID: "node-uid-1"}},
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-1", UID: "pv-uid-1"}},
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "data-web-0", Namespace: "shop", UID: "pvc-uid-1"}})
	f.mirror = NewMirror(MirrorConfig{Node: node, Dynamic: f.dyn, Core: clientsetCore{f.core}, Inventory: f.inv, Recorder: f.recorder, Clock: f.clock})
	stop, ok := f.mirror.watch(ctx)
	t.Cleanup(func() { cancel(); stop() })
	if !ok {
		t.Fatal("informer did not sync")
	}
	return f
}

// objects lists every LocalDisk in the fake API server, by name.
func (f *fixture) objects() map[string]*v1alpha1.LocalDisk {
	f.t.Helper()
	list, err := f.dyn.Resource(v1alpha1.GroupVersionResource).List(f.ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]*v1alpha1.LocalDisk{}
	for i := range list.Items {
		o, err := fromObject(&list.Items[i])
		if err != nil {
			f.t.Fatal(err)
		}
		out[o.Name] = o
	}
	return out
}

// sync runs Sync once the informer's cache shows what the API server
// holds (it lags the writes), and fails the test on an error.
func (f *fixture) sync() {
	f.t.Helper()
	if err := f.trySync(); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) trySync() error {
	f.t.Helper()
	want := len(f.objects())
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if got, _ := f.mirror.lister.List(labels.Everything()); len(got) == want {
			break
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("informer cache does not catch up with %d objects", want)
		}
	}
	time.Sleep(20 * time.Millisecond) // let updates of existing objects reach the cache too
	return f.mirror.Sync(f.ctx)
}

// events returns the events emitted since the last call, each as
// "<type> <reason> <message> on <kind> <namespace>/<name> <uid>".
func (f *fixture) events() []string {
	f.recorder.mu.Lock()
	defer f.recorder.mu.Unlock()
	out := f.recorder.events
	f.recorder.events = nil
	return out
}

// clientsetCore is Core over a clientset (here client-go's fake).
type clientsetCore struct{ c kubernetes.Interface }

func (k clientsetCore) Node(ctx context.Context, name string) (*corev1.Node, error) {
	return k.c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
}

func (k clientsetCore) PersistentVolume(ctx context.Context, name string) (*corev1.PersistentVolume, error) {
	return k.c.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
}

func (k clientsetCore) PersistentVolumeClaim(ctx context.Context, namespace, name string) (*corev1.PersistentVolumeClaim, error) {
	return k.c.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, name, metav1.GetOptions{})
}

// testRecorder keeps the events with the whole reference they are about.
type testRecorder struct {
	mu     sync.Mutex
	events []string
}

func (r *testRecorder) Event(o runtime.Object, eventtype, reason, msg string) {
	ref := o.(*corev1.ObjectReference)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%s %s %s on %s %s/%s %s", eventtype, reason, msg, ref.Kind, ref.Namespace, ref.Name, ref.UID))
}

func (r *testRecorder) Eventf(o runtime.Object, eventtype, reason, format string, args ...any) {
	r.Event(o, eventtype, reason, fmt.Sprintf(format, args...))
}

func (r *testRecorder) AnnotatedEventf(o runtime.Object, _ map[string]string, eventtype, reason, format string, args ...any) {
	r.Event(o, eventtype, reason, fmt.Sprintf(format, args...))
}

var _ record.EventRecorder = (*testRecorder)(nil)

// TestMirrorFollowsTheRecord: every disk gets a LocalDisk owned by the
// Node with its identity, size and phase; an allocated disk shows its
// volume, PV and claim; a cleaning disk its progress; a free disk gone for
// good loses its object; a missing disk with a volume shows Missing.
func TestMirrorFollowsTheRecord(t *testing.T) {
	f := newFixture(t, fakeDisk(0, 100<<30), fakeDisk(1, 200<<30), fakeDisk(2, 300<<30))
	f.sync()
	objs := f.objects()
	if len(objs) != 3 {
		t.Fatalf("%d objects, want 3", len(objs))
	}
	o := objs["node-a-serial-d0-"+nameHash(node, "serial-D0")]
	if o == nil {
		t.Fatalf("no object named for serial-D0: %v", keys(objs))
	}
	if o.Spec.Node != node || o.Spec.DiskID != "serial-D0" || o.Status.Phase != v1alpha1.PhaseFree || o.Status.Capacity != "100Gi" ||
		o.Status.Device != "/dev/vdb" || o.Status.Identity != "serial:D0" || o.Status.Category != "local_ssd_pro" {
		t.Fatalf("object %+v", o)
	}
	if len(o.OwnerReferences) != 1 || o.OwnerReferences[0].Kind != "Node" || o.OwnerReferences[0].UID != "node-uid-1" {
		t.Fatalf("owner %+v", o.OwnerReferences)
	}

	v, err := f.inv.Allocate(f.ctx, inventory.Request{Name: "pvc-1", RequiredBytes: 150 << 30, CleanupPolicy: "shred",
		PV: "pvc-1", ClaimNamespace: "shop", ClaimName: "data-web-0"})
	if err != nil {
		t.Fatal(err)
	}
	f.sync()
	o = byDisk(f.objects(), "serial-D1")
	if o.Status.Phase != v1alpha1.PhaseAllocated || o.Status.Claim != "shop/data-web-0" || o.Status.Volume == nil ||
		o.Status.Volume.ID != v.ID || o.Status.Volume.PersistentVolume != "pvc-1" {
		t.Fatalf("allocated disk's object: %+v %+v", o.Status, o.Status.Volume)
	}

	// The device of the volume's disk and a free disk vanish: the free
	// one's record goes, and so does its object; the volume's is Missing,
	// and its PV and claim are told.
	f.src.Set(fakeDisk(0, 100<<30))
	if err := f.inv.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	f.sync()
	objs = f.objects()
	if len(objs) != 2 || byDisk(objs, "serial-D2") != nil {
		t.Fatalf("objects after serial-D2 went: %v", keys(objs))
	}
	if o := byDisk(objs, "serial-D1"); o.Status.Phase != v1alpha1.PhaseMissing || o.Status.Volume == nil {
		t.Fatalf("missing disk's object: %+v", o.Status)
	}
	ev := strings.Join(f.events(), "\n")
	for _, want := range []string{"Warning DiskMissing The local disk serial-D1", "on PersistentVolume /pvc-1 pv-uid-1",
		"on PersistentVolumeClaim shop/data-web-0 pvc-uid-1"} {
		if !strings.Contains(ev, want) {
			t.Errorf("events do not say %q:\n%s", want, ev)
		}
	}
}

// TestMirrorAppliesCordons: spec.cordoned set by an operator withdraws the
// disk from capacity and allocation, status.cordoned says it is applied;
// an uncordon gives it back. A cordon recorded by the node survives the
// deletion of its object: the object comes back cordoned.
func TestMirrorAppliesCordons(t *testing.T) {
	f := newFixture(t, fakeDisk(0, 100<<30))
	f.sync()
	o := byDisk(f.objects(), "serial-D0")
	setCordoned(t, f, o.Name, true)
	f.sync()
	if a, _, err := f.inv.Capacity(f.ctx, inventory.Filter{}); err != nil || a != 0 {
		t.Fatalf("capacity with the only disk cordoned: %d %v", a, err)
	}
	if _, err := f.inv.Allocate(f.ctx, inventory.Request{Name: "pvc-x"}); !errors.Is(err, inventory.ErrExhausted) {
		t.Fatalf("allocation of a cordoned disk: %v", err)
	}
	f.sync() // the status follows once the cordon is applied
	if o := byDisk(f.objects(), "serial-D0"); !o.Status.Cordoned {
		t.Fatalf("status does not show the cordon: %+v", o.Status)
	}
	if err := f.dyn.Resource(v1alpha1.GroupVersionResource).Delete(f.ctx, o.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	f.sync()
	if o := byDisk(f.objects(), "serial-D0"); o == nil || !o.Spec.Cordoned {
		t.Fatalf("recreated object: %+v", o)
	}
	setCordoned(t, f, o.Name, false)
	f.sync()
	if a, _, _ := f.inv.Capacity(f.ctx, inventory.Filter{}); a != 100<<30 {
		t.Fatalf("capacity after uncordon: %d", a)
	}
}

// TestMirrorAppliesDamage: spec.damaged, set by the cluster component,
// takes the disk out of capacity and shows as the Damaged phase with the
// reason; lifted, the disk is free again.
func TestMirrorAppliesDamage(t *testing.T) {
	f := newFixture(t, fakeDisk(0, 100<<30))
	f.sync()
	o := byDisk(f.objects(), "serial-D0")
	setSpec(t, f, o.Name, map[string]any{"damaged": "ECS event e-1: Disk:ErrorDetected"})
	f.sync()
	if a, _, err := f.inv.Capacity(f.ctx, inventory.Filter{}); err != nil || a != 0 {
		t.Fatalf("capacity with the only disk damaged: %d %v", a, err)
	}
	f.sync()
	if o := byDisk(f.objects(), "serial-D0"); o.Status.Phase != v1alpha1.PhaseDamaged || !strings.Contains(o.Status.Reason, "e-1") {
		t.Fatalf("status %+v", o.Status)
	}
	setSpec(t, f, o.Name, map[string]any{"damaged": nil})
	f.sync()
	f.sync()
	if o := byDisk(f.objects(), "serial-D0"); o.Status.Phase != v1alpha1.PhaseFree {
		t.Fatalf("status once lifted %+v", o.Status)
	}
}

// TestMirrorLeavesOtherNodesAlone: a LocalDisk of another node, even one
// naming a disk ID this node has, is neither changed nor deleted, and its
// cordon does not apply here.
func TestMirrorLeavesOtherNodesAlone(t *testing.T) {
	f := newFixture(t, fakeDisk(0, 100<<30))
	other := &v1alpha1.LocalDisk{ObjectMeta: metav1.ObjectMeta{Name: "node-b-serial-d0"},
		Spec:   v1alpha1.LocalDiskSpec{Node: "node-b", DiskID: "serial-D0", Cordoned: true},
		Status: v1alpha1.LocalDiskStatus{Phase: v1alpha1.PhaseAllocated}}
	u, _ := toUnstructured(other)
	if _, err := f.dyn.Resource(v1alpha1.GroupVersionResource).Create(f.ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.sync()
	f.sync()
	got := f.objects()["node-b-serial-d0"]
	if got == nil || got.Status.Phase != v1alpha1.PhaseAllocated || got.ResourceVersion != u.GetResourceVersion() && u.GetResourceVersion() != "" {
		t.Fatalf("other node's object changed: %+v", got)
	}
	if a, _, _ := f.inv.Capacity(f.ctx, inventory.Filter{}); a != 100<<30 {
		t.Fatalf("another node's cordon applied here: capacity %d", a)
	}
}

// TestMirrorEventsAreRateLimited: a disk whose cleanup fails is told on
// the Node once; a disk flapping between missing and present is told once
// per window, again after it.
func TestMirrorEventsAreRateLimited(t *testing.T) {
	f := newFixture(t, fakeDisk(0, 100<<30), fakeDisk(1, 100<<30))
	f.sync()
	v, err := f.inv.Allocate(f.ctx, inventory.Request{Name: "pvc-1", CleanupPolicy: "zero"})
	if err != nil {
		t.Fatal(err)
	}
	f.m.SetError(mounter.OpWipe, errors.New("I/O error"))
	if err := f.inv.Release(f.ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, f, v.Disk.ID, v1alpha1.PhaseFailed)
	ev := f.events()
	if len(ev) != 1 || !strings.Contains(ev[0], "Warning DiskCleanupFailed Cleanup (zero) of local disk "+v.Disk.ID) ||
		!strings.Contains(ev[0], "I/O error") || !strings.Contains(ev[0], "on Node /node-a node-uid-1") {
		t.Fatalf("events %q", ev)
	}
	// The failed disk's device flaps: gone, back, gone, ... Its record
	// stays (it holds a volume being cleaned); it is told missing once per
	// window.
	var still []disk.Disk
	for _, d := range []disk.Disk{fakeDisk(0, 100<<30), fakeDisk(1, 100<<30)} {
		if d.ID != v.Disk.ID {
			still = append(still, d)
		}
	}
	for i := range 6 {
		if i%2 == 0 {
			f.src.Set(still...)
		} else {
			f.src.Set(fakeDisk(0, 100<<30), fakeDisk(1, 100<<30))
		}
		if err := f.inv.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
		f.sync()
	}
	if ev := f.events(); len(ev) != 1 || !strings.Contains(ev[0], "Warning DiskMissing") {
		t.Fatalf("events of a disk flapping 3 times in a window: %q", ev)
	}
	f.clock.Step(11 * time.Minute)
	f.src.Set(still...)
	if err := f.inv.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	f.sync()
	if ev := f.events(); len(ev) != 1 || !strings.Contains(ev[0], "Warning DiskMissing") {
		t.Fatalf("events of the disk missing after the window: %q", ev)
	}
}

func waitPhase(t *testing.T, f *fixture, id, phase string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; {
		f.sync()
		if o := byDisk(f.objects(), id); o != nil && o.Status.Phase == phase {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("disk %s never %s", id, phase)
		}
	}
}

// TestMirrorSurvivesAPIErrors: with the API server refusing writes, Sync
// fails and changes nothing on the node; once it answers again, the next
// Sync catches up.
func TestMirrorSurvivesAPIErrors(t *testing.T) {
	f := newFixture(t, fakeDisk(0, 100<<30))
	f.dyn.PrependReactor("create", "localdisks", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	if err := f.mirror.Sync(f.ctx); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("sync against a refusing API server: %v", err)
	}
	if a, _, _ := f.inv.Capacity(f.ctx, inventory.Filter{}); a != 100<<30 {
		t.Fatalf("capacity while the API server refuses: %d", a)
	}
	f.dyn.ReactionChain = f.dyn.ReactionChain[1:]
	f.sync()
	if len(f.objects()) != 1 {
		t.Fatalf("objects after the API server is back: %v", keys(f.objects()))
	}
}

func setCordoned(t *testing.T, f *fixture, name string, cordoned bool) {
	t.Helper()
	setSpec(t, f, name, map[string]any{"cordoned": cordoned})
}

// setSpec sets (or, for nil, removes) spec fields of a LocalDisk, as an
// operator or the cluster component does.
func setSpec(t *testing.T, f *fixture, name string, fields map[string]any) {
	t.Helper()
	res := f.dyn.Resource(v1alpha1.GroupVersionResource)
	u, err := res.Get(f.ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range fields {
		if v == nil {
			unstructured.RemoveNestedField(u.Object, "spec", k)
		} else if err := unstructured.SetNestedField(u.Object, v, "spec", k); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := res.Update(f.ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func byDisk(objs map[string]*v1alpha1.LocalDisk, id string) *v1alpha1.LocalDisk {
	for _, o := range objs {
		if o.Spec.DiskID == id {
			return o
		}
	}
	return nil
}

func keys(objs map[string]*v1alpha1.LocalDisk) []string {
	var out []string
	for k := range objs {
		out = append(out, k)
	}
	return out
}

func nameHash(node, id string) string {
	n := v1alpha1.ObjectName(node, id)
	return n[strings.LastIndex(n, "-")+1:]
}

// TestVolumeRefusedIsTold: a volume refused for safety is told on its PV
// and its claim, once per window.
func TestVolumeRefusedIsTold(t *testing.T) {
	f := newFixture(t, fakeDisk(0, 100<<30))
	v, err := f.inv.Allocate(f.ctx, inventory.Request{Name: "pvc-1", PV: "pvc-1", ClaimNamespace: "shop", ClaimName: "data-web-0"})
	if err != nil {
		t.Fatal(err)
	}
	f.sync()
	for range 3 {
		f.mirror.VolumeRefused(v, "the disk carries xfs with UUID 1234, not the volume's filesystem")
	}
	var ev []string
	for deadline := time.Now().Add(5 * time.Second); len(ev) < 2 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		ev = append(ev, f.events()...)
	}
	time.Sleep(100 * time.Millisecond)
	ev = append(ev, f.events()...)
	got := strings.Join(ev, "\n")
	if len(ev) != 2 || !strings.Contains(got, "Warning VolumeRefused Node node-a refuses to use local disk serial-D0") ||
		!strings.Contains(got, "on PersistentVolume /pvc-1 pv-uid-1") || !strings.Contains(got, "on PersistentVolumeClaim shop/data-web-0 pvc-uid-1") ||
		!strings.Contains(got, "carries xfs") {
		t.Fatalf("events:\n%s", got)
	}
}

// TestVolumeAbnormalIsTold: a volume whose filesystem turned read-only is
// told on its PV and claim, once per window however often the kubelet asks.
func TestVolumeAbnormalIsTold(t *testing.T) {
	f := newFixture(t, fakeDisk(0, 100<<30))
	v, err := f.inv.Allocate(f.ctx, inventory.Request{Name: "pvc-1", PV: "pvc-1", ClaimNamespace: "shop", ClaimName: "data-web-0"})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		f.mirror.VolumeAbnormal(v, "filesystem on /dev/vdb turned read-only")
	}
	var ev []string
	for deadline := time.Now().Add(5 * time.Second); len(ev) < 2 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		ev = append(ev, f.events()...)
	}
	time.Sleep(100 * time.Millisecond)
	ev = append(ev, f.events()...)
	if got := strings.Join(ev, "\n"); len(ev) != 2 || strings.Count(got, "Warning VolumeAbnormal Volume "+v.ID) != 2 || !strings.Contains(got, "turned read-only") {
		t.Fatalf("events:\n%s", got)
	}
}

// TestMirrorFollowsANewNode: a Node deleted and registered again (a new
// UID) owns the objects made after it: the garbage collector, which
// deletes the objects of the old Node, does not take the new ones.
func TestMirrorFollowsANewNode(t *testing.T) {
	f := newFixture(t, fakeDisk(0, 100<<30))
	f.sync()
	if err := f.core.CoreV1().Nodes().Delete(f.ctx, node, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The garbage collector deletes the old Node's object.
	for name := range f.objects() {
		if err := f.dyn.Resource(v1alpha1.GroupVersionResource).Delete(f.ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.trySync(); err == nil || !strings.Contains(err.Error(), "reading node "+node) {
		t.Fatalf("sync without its Node: %v", err)
	}
	if _, err := f.core.CoreV1().Nodes().Create(f.ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, UID: "node-uid-2"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.sync()
	o := byDisk(f.objects(), "serial-D0")
	if o == nil || len(o.OwnerReferences) != 1 || o.OwnerReferences[0].UID != "node-uid-2" {
		t.Fatalf("object after the Node came back: %+v", o)
	}
}

// TestStatusOnlySyncReadsNoNode: a sync that only updates statuses (an
// allocation) makes no request for the Node, so a burst of allocations
// costs the API server one status update per disk and nothing more; the
// sync that creates objects reads the Node once.
func TestStatusOnlySyncReadsNoNode(t *testing.T) {
	f := newFixture(t, fakeDisk(0, 100<<30), fakeDisk(1, 100<<30))
	nodeGets := func() int {
		n := 0
		for _, a := range f.core.Actions() {
			if a.GetVerb() == "get" && a.GetResource().Resource == "nodes" {
				n++
			}
		}
		f.core.ClearActions()
		return n
	}
	f.sync()
	if n := nodeGets(); n != 1 {
		t.Fatalf("the sync creating two objects read the Node %d times, want 1", n)
	}
	if _, err := f.inv.Allocate(f.ctx, inventory.Request{Name: "pvc-1"}); err != nil {
		t.Fatal(err)
	}
	f.sync()
	v, err := f.inv.Allocate(f.ctx, inventory.Request{Name: "pvc-1"}) // the same volume again
	if err != nil {
		t.Fatal(err)
	}
	if o := byDisk(f.objects(), v.Disk.ID); o == nil || o.Status.Volume == nil || o.Status.Volume.ID != v.ID {
		t.Fatalf("the allocation is not mirrored: %+v", o)
	}
	if n := nodeGets(); n != 0 {
		t.Fatalf("a status-only sync read the Node %d times", n)
	}
}
