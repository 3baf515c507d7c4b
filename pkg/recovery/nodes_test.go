package recovery

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	v1alpha1 "github.com/ecs-localdisk/ecs-localdisk-csi/pkg/apis/v1alpha1"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
)

const (
	driverName = "localdisk.csi.alibabacloud.com"
	topoKey    = "topology." + driverName + "/node"
	namespace  = "kube-system"
	grace      = time.Minute
)

// fixture is the controller against a fake API server that enforces
// delete preconditions, and optionally a fake ECS.
type fixture struct {
	t     *testing.T
	ctx   context.Context
	core  *kubefake.Clientset
	dyn   *dynamicfake.FakeDynamicClient
	ecs   *cloud.Fake
	clock *clocktesting.FakeClock
	rec   *recorder
	c     *Controller
}

type recorder struct {
	mu     sync.Mutex
	events []string
}

func (r *recorder) Event(o runtime.Object, kind, reason, msg string) {
	m, _ := meta.Accessor(o)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%s %s %s/%s: %s", kind, reason, m.GetNamespace(), m.GetName(), msg))
}
func (r *recorder) Eventf(o runtime.Object, kind, reason, f string, a ...any) {
	r.Event(o, kind, reason, fmt.Sprintf(f, a...))
}
func (r *recorder) AnnotatedEventf(o runtime.Object, _ map[string]string, kind, reason, f string, a ...any) {
	r.Event(o, kind, reason, fmt.Sprintf(f, a...))
}

func (r *recorder) has(reason, object string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.ContainsFunc(r.events, func(e string) bool { return strings.Contains(e, " "+reason+" "+object+":") })
}

func node(name, instance string, isReady bool) *corev1.Node {
	st := corev1.ConditionTrue
	if !isReady {
		st = corev1.ConditionUnknown
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name)},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: st}}}}
	if instance != "" {
		n.Spec.ProviderID = "cn-hangzhou." + instance
	}
	return n
}

func class(name, onLoss string) *storagev1.StorageClass {
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: driverName, Parameters: map[string]string{}}
	if onLoss != "" {
		sc.Parameters[v1alpha1.ParamOnDiskLoss] = onLoss
	}
	return sc
}

// volume is a bound PV on node, its claim and the StatefulSet's pod using it.
func volume(name, nodeName, instance, sc string, policy corev1.PersistentVolumeReclaimPolicy) (*corev1.PersistentVolume, *corev1.PersistentVolumeClaim) {
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "data-" + name, Namespace: "shop", UID: types.UID("pvc-uid-" + name), ResourceVersion: "7",
		Finalizers: []string{pvcProtection}},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "pv-" + name, StorageClassName: &sc}}
	attrs := map[string]string{}
	if instance != "" {
		attrs[volumeContextInstanceID] = instance
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-" + name, UID: types.UID("pv-uid-" + name), ResourceVersion: "5",
			Finalizers: []string{pvProtection, provisionerFinalizer}},
		Spec: corev1.PersistentVolumeSpec{
			StorageClassName: sc, PersistentVolumeReclaimPolicy: policy,
			ClaimRef:               &corev1.ObjectReference{Namespace: "shop", Name: pvc.Name, UID: pvc.UID},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driverName, VolumeHandle: nodeName + "#" + name, VolumeAttributes: attrs}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: topoKey, Operator: corev1.NodeSelectorOpIn, Values: []string{nodeName}}}}}}},
		},
	}
	return pv, pvc
}

func pod(name, claim, nodeName string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("pod-uid-" + name), ResourceVersion: "3"},
		Spec: corev1.PodSpec{NodeName: nodeName, Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}},
		Status: corev1.PodStatus{Phase: phase}}
}

func capacity(name, nodeName string) *storagev1.CSIStorageCapacity {
	return &storagev1.CSIStorageCapacity{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, UID: types.UID("cap-" + name)},
		NodeTopology: &metav1.LabelSelector{MatchLabels: map[string]string{topoKey: nodeName}}, StorageClassName: "ssd"}
}

func localDisk(nodeName, diskID, instance string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.Group + "/" + v1alpha1.Version, "kind": v1alpha1.Kind,
		"metadata": map[string]any{"name": v1alpha1.ObjectName(nodeName, diskID), "uid": "ld-" + nodeName + diskID},
		"spec":     map[string]any{"node": nodeName, "diskID": diskID},
		"status":   map[string]any{"instanceID": instance},
	}}
	return u
}

const (
	pvcProtection = "kubernetes.io/pvc-protection"
	pvProtection  = "kubernetes.io/pv-protection"
)

// deletes makes the fake API server delete as the real one does: a delete
// whose preconditions do not match the stored object is refused, and an
// object with finalizers only gets its deletionTimestamp.
func deletes(tracker clienttesting.ObjectTracker, now func() time.Time) clienttesting.ReactionFunc {
	return func(a clienttesting.Action) (bool, runtime.Object, error) {
		d := a.(clienttesting.DeleteActionImpl)
		obj, err := tracker.Get(d.Resource, d.Namespace, d.Name)
		if err != nil {
			return false, nil, nil
		}
		m, _ := meta.Accessor(obj)
		if p := d.DeleteOptions.Preconditions; p != nil && ((p.UID != nil && *p.UID != m.GetUID()) || (p.ResourceVersion != nil && *p.ResourceVersion != m.GetResourceVersion())) {
			return true, nil, apierrors.NewConflict(d.Resource.GroupResource(), d.Name, fmt.Errorf("precondition failed: UID or resourceVersion changed"))
		}
		if len(m.GetFinalizers()) == 0 {
			return false, nil, nil
		}
		if m.GetDeletionTimestamp() == nil {
			at := metav1.NewTime(now())
			m.SetDeletionTimestamp(&at)
			bump(m)
			return true, nil, tracker.Update(d.Resource, obj, d.Namespace)
		}
		return true, nil, nil
	}
}

func bump(m metav1.Object) {
	rv, _ := strconv.Atoi(m.GetResourceVersion())
	m.SetResourceVersion(strconv.Itoa(rv + 1))
}

// protect does what Kubernetes' pvc-protection and pv-protection
// controllers and its garbage collector do: a claim no scheduled pod uses
// and a PV no claim holds lose their finalizers once being deleted, and a
// deleted object without finalizers goes.
func (f *fixture) protect() {
	f.t.Helper()
	tr := f.core.Tracker()
	pvcRes, pvRes := corev1.SchemeGroupVersion.WithResource("persistentvolumeclaims"), corev1.SchemeGroupVersion.WithResource("persistentvolumes")
	pods, _ := f.core.CoreV1().Pods("").List(f.ctx, metav1.ListOptions{})
	claims, _ := f.core.CoreV1().PersistentVolumeClaims("").List(f.ctx, metav1.ListOptions{})
	for _, c := range claims.Items {
		if c.DeletionTimestamp == nil {
			continue
		}
		used := slices.ContainsFunc(pods.Items, func(p corev1.Pod) bool {
			return p.Namespace == c.Namespace && p.Spec.NodeName != "" && slices.ContainsFunc(p.Spec.Volumes, func(v corev1.Volume) bool {
				return v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == c.Name
			})
		})
		if used {
			continue
		}
		c.Finalizers = slices.DeleteFunc(c.Finalizers, func(s string) bool { return s == pvcProtection })
		bump(&c)
		if err := tr.Update(pvcRes, &c, c.Namespace); err != nil {
			f.t.Fatal(err)
		}
	}
	pvs, _ := f.core.CoreV1().PersistentVolumes().List(f.ctx, metav1.ListOptions{})
	for _, pv := range pvs.Items {
		if pv.DeletionTimestamp == nil || pv.Spec.ClaimRef == nil {
			continue
		}
		if c, err := f.core.CoreV1().PersistentVolumeClaims(pv.Spec.ClaimRef.Namespace).Get(f.ctx, pv.Spec.ClaimRef.Name, metav1.GetOptions{}); err == nil && c.UID == pv.Spec.ClaimRef.UID {
			continue
		}
		pv.Finalizers = slices.DeleteFunc(pv.Finalizers, func(s string) bool { return s == pvProtection })
		bump(&pv)
		if err := tr.Update(pvRes, &pv, ""); err != nil {
			f.t.Fatal(err)
		}
	}
	claims, _ = f.core.CoreV1().PersistentVolumeClaims("").List(f.ctx, metav1.ListOptions{})
	for _, c := range claims.Items {
		if c.DeletionTimestamp != nil && len(c.Finalizers) == 0 {
			tr.Delete(pvcRes, c.Namespace, c.Name)
		}
	}
	pvs, _ = f.core.CoreV1().PersistentVolumes().List(f.ctx, metav1.ListOptions{})
	for _, pv := range pvs.Items {
		if pv.DeletionTimestamp != nil && len(pv.Finalizers) == 0 {
			tr.Delete(pvRes, "", pv.Name)
		}
	}
}

func newFixture(t *testing.T, withCloud bool, objs ...runtime.Object) *fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var typed, disks []runtime.Object
	for _, o := range objs {
		if _, ok := o.(*unstructured.Unstructured); ok {
			disks = append(disks, o)
		} else {
			typed = append(typed, o)
		}
	}
	f := &fixture{t: t, ctx: ctx, core: kubefake.NewClientset(typed...), rec: &recorder{},
		clock: clocktesting.NewFakeClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))}
	f.core.PrependReactor("delete", "*", deletes(f.core.Tracker(), f.clock.Now))
	f.dyn = dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{v1alpha1.GroupVersionResource: "LocalDiskList"}, disks...)
	cfg := Config{DriverName: driverName, Namespace: namespace, Core: f.core, Dynamic: f.dyn, Recorder: f.rec, GracePeriod: grace, Clock: f.clock, Region: "cn-hangzhou"}
	if withCloud {
		f.ecs = cloud.NewFake(cloud.Instance{ID: "i-self", Region: "cn-hangzhou"})
		t.Cleanup(f.ecs.Close)
		creds, err := cloud.NewCredentialProvider(cloud.CredentialConfig{Getenv: func(k string) string {
			return map[string]string{"ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAItest", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "secret"}[k]
		}})
		if err != nil {
			t.Fatal(err)
		}
		api, err := cloud.NewAPI(cloud.APIConfig{Region: "cn-hangzhou", Endpoint: f.ecs.API.URL, Credentials: creds, Attempts: 2, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Cloud = api
		f.ecs.Update(func(e *cloud.Fake) {
			for _, o := range typed {
				if n, ok := o.(*corev1.Node); ok {
					_, id := InstanceOfProviderID(n.Spec.ProviderID)
					e.Instances[id] = "Running"
				}
			}
		})
	}
	f.c = New(cfg)
	if err := f.c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return f
}

// sync runs one pass once the informers show what the API server holds.
func (f *fixture) sync() {
	f.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		pvs, _ := f.core.CoreV1().PersistentVolumes().List(f.ctx, metav1.ListOptions{})
		nodes, _ := f.core.CoreV1().Nodes().List(f.ctx, metav1.ListOptions{})
		cpv, _ := f.c.pvs.List(labels.Everything())
		cn, _ := f.c.nodes.List(labels.Everything())
		caps, _ := f.core.StorageV1().CSIStorageCapacities(namespace).List(f.ctx, metav1.ListOptions{})
		ccaps, _ := f.c.capacities.List(labels.Everything())
		if len(pvs.Items) == len(cpv) && len(nodes.Items) == len(cn) && len(caps.Items) == len(ccaps) {
			break
		}
		if time.Now().After(deadline) {
			f.t.Fatal("informers do not catch up")
		}
	}
	time.Sleep(20 * time.Millisecond)
	if err := f.c.Sync(f.ctx); err != nil {
		f.t.Fatal(err)
	}
	f.protect()
}

func (f *fixture) exists(kind, ns, name string) bool {
	f.t.Helper()
	var err error
	switch kind {
	case "pvc":
		_, err = f.core.CoreV1().PersistentVolumeClaims(ns).Get(f.ctx, name, metav1.GetOptions{})
	case "pv":
		_, err = f.core.CoreV1().PersistentVolumes().Get(f.ctx, name, metav1.GetOptions{})
	case "pod":
		_, err = f.core.CoreV1().Pods(ns).Get(f.ctx, name, metav1.GetOptions{})
	case "capacity":
		_, err = f.core.StorageV1().CSIStorageCapacities(ns).Get(f.ctx, name, metav1.GetOptions{})
	case "localdisk":
		_, err = f.dyn.Resource(v1alpha1.GroupVersionResource).Get(f.ctx, name, metav1.GetOptions{})
	}
	if err != nil && !apierrors.IsNotFound(err) {
		f.t.Fatal(err)
	}
	return err == nil
}

func (f *fixture) deleteNode(name string) {
	f.t.Helper()
	if err := f.core.CoreV1().Nodes().Delete(f.ctx, name, metav1.DeleteOptions{}); err != nil {
		f.t.Fatal(err)
	}
}

// deletes lists the delete calls made so far, as "resource ns/name", but
// for the test's own deletion of nodes.
func (f *fixture) deletes() []string {
	var out []string
	for _, a := range f.core.Actions() {
		if d, ok := a.(clienttesting.DeleteActionImpl); ok && d.Resource.Resource != "nodes" {
			out = append(out, d.Resource.Resource+" "+d.Namespace+"/"+d.Name)
		}
	}
	for _, a := range f.dyn.Actions() {
		if d, ok := a.(clienttesting.DeleteActionImpl); ok {
			out = append(out, d.Resource.Resource+" "+d.Namespace+"/"+d.Name)
		}
	}
	return out
}

// world is two nodes: a (the one lost) with web-0's volume, and b, Ready,
// with web-1's; web-0's pod is Pending on a, another pod runs elsewhere.
func world(sc string, onLoss string, policy corev1.PersistentVolumeReclaimPolicy) []runtime.Object {
	pv0, pvc0 := volume("web-0", "a", "i-a", sc, policy)
	pv1, pvc1 := volume("web-1", "b", "i-b", sc, policy)
	return []runtime.Object{node("a", "i-a", true), node("b", "i-b", true), class(sc, onLoss), pv0, pvc0, pv1, pvc1,
		pod("web-0", pvc0.Name, "a", corev1.PodPending), pod("web-1", pvc1.Name, "b", corev1.PodRunning),
		capacity("cap-a", "a"), capacity("cap-b", "b"), localDisk("a", "d0", "i-a"), localDisk("b", "d0", "i-b")}
}

func TestNodeDeletedWithoutCloudAfterGrace(t *testing.T) {
	f := newFixture(t, false, world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)...)
	f.deleteNode("a")
	f.sync()
	f.clock.Step(grace - time.Second)
	f.sync()
	if d := f.deletes(); len(d) != 0 {
		t.Fatalf("deleted within the grace period: %v", d)
	}
	f.clock.Step(2 * time.Second)
	f.sync() // claim and pods
	if f.exists("pvc", "shop", "data-web-0") || f.exists("pod", "shop", "web-0") {
		t.Fatalf("claim or pod of the lost volume kept: %v", f.deletes())
	}
	f.sync() // the PV, its claim gone
	if f.exists("pv", "", "pv-web-0") {
		t.Fatalf("lost PV kept: %v", f.deletes())
	}
	for _, kept := range [][3]string{{"pvc", "shop", "data-web-1"}, {"pv", "", "pv-web-1"}, {"pod", "shop", "web-1"}, {"capacity", namespace, "cap-b"}, {"localdisk", "", "b-d0"}} {
		if !f.exists(kept[0], kept[1], kept[2]) {
			t.Errorf("%s %s/%s of the healthy node deleted", kept[0], kept[1], kept[2])
		}
	}
	if f.exists("capacity", namespace, "cap-a") || f.exists("localdisk", "", "a-d0") {
		t.Error("the lost node's CSIStorageCapacity or LocalDisk kept")
	}
	for _, want := range [][2]string{{ReasonDiskLost, "/pv-web-0"}, {ReasonDiskLost, "shop/data-web-0"}, {ReasonClaimDeleted, "shop/data-web-0"},
		{ReasonPodDeleted, "shop/web-0"}, {ReasonVolumeDeleted, "/pv-web-0"}} {
		if !f.rec.has(want[0], want[1]) {
			t.Errorf("no %s event on %s; events %q", want[0], want[1], f.rec.events)
		}
	}
}

func TestNodeReRegisteredWithinGraceChangesNothing(t *testing.T) {
	f := newFixture(t, false, world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)...)
	f.deleteNode("a")
	f.sync()
	f.clock.Step(grace / 2)
	if _, err := f.core.CoreV1().Nodes().Create(f.ctx, node("a", "i-a", true), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.sync()
	f.clock.Step(grace)
	f.sync()
	if d := f.deletes(); len(d) != 0 {
		t.Fatalf("deleted after the node came back: %v", d)
	}
}

func TestNodeDeletedInstanceAliveChangesNothing(t *testing.T) {
	f := newFixture(t, true, world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)...)
	f.deleteNode("a")
	f.sync()
	f.clock.Step(2 * grace)
	f.sync()
	f.sync()
	if d := f.deletes(); len(d) != 0 {
		t.Fatalf("deleted while ECS lists the instance: %v", d)
	}
	if !f.rec.has(ReasonInstanceRunning, "/pv-web-0") {
		t.Errorf("no %s event; events %q", ReasonInstanceRunning, f.rec.events)
	}
}

func TestNodeDeletedInstanceReleased(t *testing.T) {
	f := newFixture(t, true, world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)...)
	f.ecs.Release("i-a")
	f.deleteNode("a")
	f.sync()
	if d := f.deletes(); len(d) != 0 {
		t.Fatalf("deleted within the grace period: %v", d)
	}
	f.clock.Step(grace)
	f.sync()
	f.sync()
	if f.exists("pvc", "shop", "data-web-0") || f.exists("pv", "", "pv-web-0") || f.exists("pod", "shop", "web-0") {
		t.Fatalf("lost volume's objects kept: deletes %v", f.deletes())
	}
	if !f.exists("pvc", "shop", "data-web-1") {
		t.Fatal("the healthy node's claim deleted")
	}
}

// An answer from ECS that lists no instance known to be alive (a wrong
// region, account or endpoint) releases nothing.
func TestEmptyCloudAnswerReleasesNothing(t *testing.T) {
	f := newFixture(t, true, world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)...)
	f.ecs.Update(func(e *cloud.Fake) { e.Instances = map[string]string{} })
	f.deleteNode("a")
	f.sync()
	f.clock.Step(2 * grace)
	f.sync()
	if d := f.deletes(); len(d) != 0 {
		t.Fatalf("deleted on an answer that lists no witness: %v", d)
	}
	if !f.rec.has(ReasonLossUnconfirmed, "/pv-web-0") {
		t.Errorf("no %s event; events %q", ReasonLossUnconfirmed, f.rec.events)
	}
}

func TestNotReadyNode(t *testing.T) {
	objs := world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)
	objs[0] = node("a", "i-a", false)
	t.Run("instance running", func(t *testing.T) {
		f := newFixture(t, true, objs...)
		f.sync()
		f.clock.Step(10 * grace)
		f.sync()
		if d := f.deletes(); len(d) != 0 {
			t.Fatalf("deleted for a NotReady node: %v", d)
		}
	})
	t.Run("without a cloud", func(t *testing.T) {
		f := newFixture(t, false, objs...)
		f.sync()
		f.clock.Step(10 * grace)
		f.sync()
		if d := f.deletes(); len(d) != 0 {
			t.Fatalf("deleted for a NotReady node: %v", d)
		}
	})
	t.Run("instance released", func(t *testing.T) {
		f := newFixture(t, true, objs...)
		f.ecs.Release("i-a")
		f.sync()
		if d := f.deletes(); len(d) != 0 {
			t.Fatalf("deleted within the grace period: %v", d)
		}
		f.clock.Step(grace)
		f.sync()
		f.sync()
		if f.exists("pvc", "shop", "data-web-0") || f.exists("pv", "", "pv-web-0") || f.exists("pod", "shop", "web-0") {
			t.Fatalf("the released instance's volume kept: %v", f.deletes())
		}
		if f.exists("localdisk", "", "a-d0") {
			t.Fatal("the released instance's LocalDisk kept")
		}
	})
}

func TestClassWithoutOptInOnlyReports(t *testing.T) {
	for _, onLoss := range []string{"", v1alpha1.OnDiskLossReport} {
		f := newFixture(t, false, world("ssd", onLoss, corev1.PersistentVolumeReclaimDelete)...)
		f.deleteNode("a")
		f.sync()
		f.clock.Step(grace)
		f.sync()
		f.sync()
		if d := f.deletes(); len(d) != 0 {
			t.Fatalf("onDiskLoss %q: deleted %v", onLoss, d)
		}
		if !f.rec.has(ReasonDiskLost, "/pv-web-0") || !f.rec.has(ReasonDiskLost, "shop/data-web-0") {
			t.Errorf("onDiskLoss %q: events %q", onLoss, f.rec.events)
		}
	}
}

// A claim recreated under the same name (another UID) is not the lost
// volume's: it stays, and so does the pod using it; the old PV goes.
func TestRecreatedClaimIsNeverDeleted(t *testing.T) {
	objs := world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)
	objs[4].(*corev1.PersistentVolumeClaim).UID = "pvc-uid-recreated"
	objs[7].(*corev1.Pod).Spec.NodeName = ""
	f := newFixture(t, false, objs...)
	f.deleteNode("a")
	f.sync()
	f.clock.Step(grace)
	f.sync()
	if !f.exists("pvc", "shop", "data-web-0") || !f.exists("pod", "shop", "web-0") {
		t.Fatalf("the recreated claim or its pod deleted: %v", f.deletes())
	}
	if f.exists("pv", "", "pv-web-0") {
		t.Fatal("the lost PV kept")
	}
}

// A claim that changes between the controller's read and its delete is
// not deleted: the delete carries the UID and resourceVersion read.
func TestChangedClaimIsNotDeleted(t *testing.T) {
	f := newFixture(t, false, world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)...)
	f.core.PrependReactor("get", "persistentvolumeclaims", func(a clienttesting.Action) (bool, runtime.Object, error) {
		obj, err := f.core.Tracker().Get(a.GetResource(), a.GetNamespace(), a.(clienttesting.GetAction).GetName())
		if err != nil {
			return true, nil, err
		}
		pvc := obj.(*corev1.PersistentVolumeClaim).DeepCopy()
		// Another writer changes the claim right after this read.
		changed := pvc.DeepCopy()
		rv, _ := strconv.Atoi(pvc.ResourceVersion)
		changed.ResourceVersion = strconv.Itoa(rv + 1)
		changed.Labels = map[string]string{"touched": "yes"}
		if err := f.core.Tracker().Update(a.GetResource(), changed, a.GetNamespace()); err != nil {
			return true, nil, err
		}
		return true, pvc, nil
	})
	f.deleteNode("a")
	f.sync()
	f.clock.Step(grace)
	if err := f.c.Sync(f.ctx); err == nil || !apierrors.IsConflict(err) {
		t.Fatalf("sync: %v, want a conflict", err)
	}
	if !f.exists("pvc", "shop", "data-web-0") {
		t.Fatal("a claim changed after the read was deleted")
	}
}

func TestRetainKeepsThePV(t *testing.T) {
	f := newFixture(t, false, world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimRetain)...)
	f.deleteNode("a")
	f.sync()
	f.clock.Step(grace)
	f.sync()
	f.sync()
	if f.exists("pvc", "shop", "data-web-0") || !f.exists("pv", "", "pv-web-0") {
		t.Fatalf("Retain: deletes %v", f.deletes())
	}
	if !f.rec.has(ReasonVolumeKept, "/pv-web-0") {
		t.Errorf("events %q", f.rec.events)
	}
}

func TestConflictingInstancesDeleteNothing(t *testing.T) {
	objs := world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)
	objs[3].(*corev1.PersistentVolume).Spec.CSI.VolumeAttributes[volumeContextInstanceID] = "i-other"
	f := newFixture(t, true, objs...)
	f.ecs.Release("i-a")
	f.ecs.Release("i-other")
	f.deleteNode("a")
	f.sync()
	f.clock.Step(2 * grace)
	f.sync()
	if d := f.deletes(); len(d) != 0 {
		t.Fatalf("deleted although the node's instance is unclear: %v", d)
	}
	if !f.rec.has(ReasonInstanceConflict, "/pv-web-0") {
		t.Errorf("events %q", f.rec.events)
	}
}

func TestInstanceOfProviderID(t *testing.T) {
	for in, want := range map[string]string{
		"cn-hangzhou.i-bp1abc": "cn-hangzhou i-bp1abc", "alicloud://cn-hangzhou.i-bp1abc": "cn-hangzhou i-bp1abc",
		"i-bp1abc": " ", "aws:///us-east-1a/i-0abc": " ", "gce://p/z/i-abc": " ", "": " ", "kind://docker/kind/node": " ",
		"cn-hangzhou.": " ", "cn-hangzhou.i-": " ", "cn-hangzhou.i-ABC": " ", "x://cn-hangzhou.i-abc": " ",
	} {
		if r, id := InstanceOfProviderID(in); r+" "+id != want {
			t.Errorf("%q: %q %q, want %q", in, r, id, want)
		}
	}
}

// A NotReady node whose providerID is not an ECS instance of this region
// (another cloud, another region) is never confirmed released: ECS not
// listing it proves nothing.
func TestForeignProviderIDIsNeverReleased(t *testing.T) {
	for _, providerID := range []string{"aws:///us-east-1a/i-0abc123def", "cn-beijing.i-0abc123def"} {
		objs := world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)
		n := node("a", "", false)
		n.Spec.ProviderID = providerID
		objs[0] = n
		delete(objs[3].(*corev1.PersistentVolume).Spec.CSI.VolumeAttributes, volumeContextInstanceID)
		objs[11] = localDisk("a", "d0", "")
		f := newFixture(t, true, objs...)
		f.sync()
		f.clock.Step(2 * grace)
		f.sync()
		f.sync()
		if d := f.deletes(); len(d) != 0 {
			t.Fatalf("providerID %s: deleted %v", providerID, d)
		}
	}
}

// One answer without the instance, at the start of the grace period,
// deletes nothing when ECS lists the instance again at its end.
func TestReleaseMustHoldForTheGracePeriod(t *testing.T) {
	f := newFixture(t, true, world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)...)
	f.deleteNode("a")
	f.ecs.Release("i-a")
	f.sync()
	f.ecs.Update(func(e *cloud.Fake) { e.Instances["i-a"] = "Running" })
	f.clock.Step(grace)
	f.sync()
	f.ecs.Release("i-a")
	f.sync() // not listed again: the grace period starts over
	f.sync()
	if d := f.deletes(); len(d) != 0 {
		t.Fatalf("deleted on an answer ECS took back: %v", d)
	}
	f.clock.Step(grace)
	f.sync()
	f.sync()
	if f.exists("pvc", "shop", "data-web-0") {
		t.Fatal("not deleted once ECS kept not listing the instance for the grace period")
	}
}

// A Node registered again under the lost node's name right before the
// controller removes the lost node's objects keeps its LocalDisks and
// capacity.
func TestReusedNodeNameKeepsItsObjects(t *testing.T) {
	f := newFixture(t, false, world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)...)
	f.deleteNode("a")
	f.sync()
	f.clock.Step(grace)
	// The node comes back between the controller's read of its cache and
	// its deletes: the cache still says it is gone.
	f.core.PrependReactor("get", "nodes", func(a clienttesting.Action) (bool, runtime.Object, error) {
		return true, node("a", "i-a2", true), nil
	})
	f.sync()
	f.sync()
	if !f.exists("localdisk", "", "a-d0") || !f.exists("capacity", namespace, "cap-a") {
		t.Fatal("the objects of the node registered again were deleted")
	}
}

// The pod its StatefulSet makes once the lost one is deleted (same name,
// Pending) is left alone while the old claim is still going away: it will
// use the new claim.
func TestReplacementPodIsNotDeleted(t *testing.T) {
	objs := world("ssd", v1alpha1.OnDiskLossRecreate, corev1.PersistentVolumeReclaimDelete)
	pvc := objs[4].(*corev1.PersistentVolumeClaim)
	pvc.Finalizers = append(pvc.Finalizers, "example.com/hold") // keeps the old claim terminating
	f := newFixture(t, false, objs...)
	f.deleteNode("a")
	f.sync()
	f.clock.Step(grace)
	f.sync()
	if f.exists("pod", "shop", "web-0") {
		t.Fatal("the lost pod kept")
	}
	f.clock.Step(time.Second)
	repl := pod("web-0", pvc.Name, "", corev1.PodPending)
	repl.UID, repl.CreationTimestamp = "pod-uid-replacement", metav1.NewTime(f.clock.Now())
	if _, err := f.core.CoreV1().Pods("shop").Create(f.ctx, repl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.sync()
	f.sync()
	p, err := f.core.CoreV1().Pods("shop").Get(f.ctx, "web-0", metav1.GetOptions{})
	if err != nil || p.UID != "pod-uid-replacement" {
		t.Fatalf("the replacement pod was deleted: %v %v", p.UID, err)
	}
}

// The capacity objects of a deleted node without volumes go after the grace
// period, and those of a node that exists stay.
func TestCapacityOfDeletedNode(t *testing.T) {
	objs := append(world("ssd", "", corev1.PersistentVolumeReclaimDelete), node("c", "i-c", true), capacity("cap-c", "c"))
	f := newFixture(t, true, objs...)
	f.deleteNode("c")
	f.sync()
	f.clock.Step(grace - time.Second)
	f.sync()
	if !f.exists("capacity", namespace, "cap-c") {
		t.Fatal("capacity deleted within the grace period")
	}
	f.clock.Step(time.Second)
	f.sync()
	if f.exists("capacity", namespace, "cap-c") {
		t.Fatal("the deleted node's capacity kept")
	}
	if !f.exists("capacity", namespace, "cap-a") || !f.exists("capacity", namespace, "cap-b") {
		t.Fatal("a live node's capacity deleted")
	}
}

// A released instance is not asked about once acted on: its volumes of a
// class without opt-in stay, and the checks that follow do not spend ECS's
// quota on it.
func TestReleasedInstanceIsAskedOnce(t *testing.T) {
	f := newFixture(t, true, world("ssd", "", corev1.PersistentVolumeReclaimDelete)...)
	f.ecs.Release("i-a")
	f.deleteNode("a")
	f.sync()
	f.clock.Step(grace)
	for range 5 {
		f.sync()
	}
	calls := 0
	for _, c := range f.ecs.APICalls() {
		if c["Action"] == "DescribeInstances" {
			calls++
		}
	}
	// Asked at the node's deletion and at the end of the grace period; not
	// again once acted on.
	if calls != 2 || !f.rec.has(ReasonDiskLost, "/pv-web-0") {
		t.Fatalf("%d DescribeInstances calls, events %q", calls, f.rec.events)
	}
}
