package recovery

import (
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clienttesting "k8s.io/client-go/testing"

	v1alpha1 "github.com/ecs-localdisk/ecs-localdisk-csi/pkg/apis/v1alpha1"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
)

// diskWithVolume is the LocalDisk of ECS disk cloudID on node, holding the
// volume of claim (in shop) and its PV, or none for "".
func diskWithVolume(node, diskID, instance, cloudID, claim string) *unstructured.Unstructured {
	u := localDisk(node, diskID, instance)
	unstructured.SetNestedField(u.Object, cloudID, "status", "cloudDiskID")
	if claim == "" {
		unstructured.SetNestedField(u.Object, v1alpha1.PhaseFree, "status", "phase")
		return u
	}
	unstructured.SetNestedField(u.Object, v1alpha1.PhaseAllocated, "status", "phase")
	name := strings.TrimPrefix(claim, "data-")
	unstructured.SetNestedMap(u.Object, map[string]any{"id": node + "#" + name, "persistentVolume": "pv-" + name,
		"claimNamespace": "shop", "claimName": claim}, "status", "volume")
	return u
}

// damageWorld is world's nodes and volumes, with web-0 Running on a's disk
// d-a0, and a free disk d-a1 on a.
func damageWorld(onLoss string) []runtime.Object {
	objs := world("ssd", onLoss, corev1.PersistentVolumeReclaimDelete)
	objs[7].(*corev1.Pod).Status.Phase = corev1.PodRunning
	objs = slices.DeleteFunc(objs, func(o runtime.Object) bool { _, ok := o.(*unstructured.Unstructured); return ok })
	return append(objs, diskWithVolume("a", "d0", "i-a", "d-a0", "data-web-0"), diskWithVolume("a", "d1", "i-a", "d-a1", ""),
		diskWithVolume("b", "d0", "i-b", "d-b0", "data-web-1"))
}

func (f *fixture) damaged(name string) string {
	f.t.Helper()
	u, err := f.dyn.Resource(v1alpha1.GroupVersionResource).Get(f.ctx, name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	s, _, _ := unstructured.NestedString(u.Object, "spec", "damaged")
	return s
}

// evictions makes the fake API server carry out evictions (no budget
// refuses them here) and counts them.
func (f *fixture) evictions() *[]string {
	var got []string
	f.core.PrependReactor("create", "pods", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "eviction" {
			return false, nil, nil
		}
		name := a.(clienttesting.CreateAction).GetObject().(metav1.Object).GetName()
		got = append(got, name)
		return true, nil, f.core.Tracker().Delete(corev1.SchemeGroupVersion.WithResource("pods"), a.GetNamespace(), name)
	})
	return &got
}

// nodesApply does what the node drivers do with spec.damaged: the status
// shows phase Damaged with the mark as its reason.
func (f *fixture) nodesApply() {
	f.t.Helper()
	res := f.dyn.Resource(v1alpha1.GroupVersionResource)
	list, err := res.List(f.ctx, metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	for i := range list.Items {
		u := &list.Items[i]
		if mark, _, _ := unstructured.NestedString(u.Object, "spec", "damaged"); mark != "" {
			unstructured.SetNestedField(u.Object, v1alpha1.PhaseDamaged, "status", "phase")
			unstructured.SetNestedField(u.Object, mark, "status", "reason")
			if _, err := res.Update(f.ctx, u, metav1.UpdateOptions{}); err != nil {
				f.t.Fatal(err)
			}
		}
	}
}

func (f *fixture) stepEvents() {
	f.clock.Step(time.Minute)
	f.sync()
}

func TestDamagedDiskIsMarkedAndReported(t *testing.T) {
	f := newFixture(t, true, damageWorld("")...)
	f.ecs.InjectEvent(cloud.FakeEvent{ID: "e-1", InstanceID: "i-a", Type: "SystemMaintenance.IsolateErrorDisk", Status: "Inquiring", DiskID: "d-a0", CanAccept: true,
		Reason: "local disk error"})
	f.ecs.InjectEvent(cloud.FakeEvent{ID: "e-2", InstanceID: "i-b", Type: cloud.DiskErrorEvent, Status: "Executing", DiskID: "d-b0"})
	// Another instance's event naming a disk ID of node a's is not a's.
	f.ecs.InjectEvent(cloud.FakeEvent{ID: "e-3", InstanceID: "i-z", Type: "SystemMaintenance.IsolateErrorDisk", Status: "Inquiring", DiskID: "d-a1"})
	f.sync()
	if got := f.damaged("a-d0"); !strings.Contains(got, "e-1") || !strings.Contains(got, "IsolateErrorDisk") {
		t.Fatalf("a-d0 damaged %q", got)
	}
	if got := f.damaged("b-d0"); !strings.Contains(got, "e-2") || !strings.Contains(got, "Disk:ErrorDetected") {
		t.Fatalf("b-d0 damaged %q", got)
	}
	if got := f.damaged("a-d1"); got != "" {
		t.Fatalf("a-d1 damaged %q by another instance's event", got)
	}
	for _, o := range []string{"/a-d0", "/pv-web-0", "shop/data-web-0", "shop/web-0"} {
		if !f.rec.has(ReasonDiskDamaged, o) {
			t.Errorf("no %s on %s: %q", ReasonDiskDamaged, o, f.rec.events)
		}
	}
	if d := f.deletes(); len(d) != 0 {
		t.Fatalf("a class without opt-in: deleted %v", d)
	}
	if got := f.ecs.AcceptedEvents(); len(got) != 0 {
		t.Fatalf("accepted without the flag: %v", got)
	}
	// ECS is done with e-1: the mark is lifted.
	f.ecs.FinishEvent("e-1")
	f.stepEvents()
	if got := f.damaged("a-d0"); got != "" {
		t.Fatalf("a-d0 still damaged %q", got)
	}
	if !f.rec.has(ReasonDiskRepaired, "/a-d0") {
		t.Errorf("events %q", f.rec.events)
	}
}

// ECS is asked no more often than EventInterval.
func TestDamageChecksAreSpaced(t *testing.T) {
	f := newFixture(t, true, damageWorld("")...)
	for range 3 {
		f.sync()
	}
	n := 0
	for _, c := range f.ecs.APICalls() {
		if c["Action"] == "DescribeInstanceHistoryEvents" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d event reads in three checks within a minute", n)
	}
}

func TestDamagedDiskRecreatedWhenOptedIn(t *testing.T) {
	f := newFixture(t, true, damageWorld(v1alpha1.OnDiskLossRecreate)...)
	evicted := f.evictions()
	f.ecs.InjectEvent(cloud.FakeEvent{ID: "e-1", InstanceID: "i-a", Type: "SystemMaintenance.ReInitErrorDisk", Status: "Inquiring", DiskID: "d-a0", CanAccept: true})
	f.sync()
	f.clock.Step(time.Second)
	f.sync()
	if f.exists("pvc", "shop", "data-web-0") {
		t.Fatalf("claim of the damaged disk's volume kept: %v", f.deletes())
	}
	if !slices.Equal(*evicted, []string{"web-0"}) {
		t.Fatalf("evicted %v", *evicted)
	}
	if !f.exists("pv", "", "pv-web-0") {
		t.Fatal("the PV was deleted by the controller: its node is alive, its provisioner deletes it")
	}
	if !f.exists("pvc", "shop", "data-web-1") || !f.exists("pod", "shop", "web-1") {
		t.Fatal("the healthy volume's claim or pod deleted")
	}
}

func TestAcceptOnlyWithoutVolume(t *testing.T) {
	f := newFixture(t, true, damageWorld("")...)
	f.c.cfg.AcceptDiskEvents = true
	f.ecs.InjectEvent(cloud.FakeEvent{ID: "e-vol", InstanceID: "i-a", Type: "SystemMaintenance.IsolateErrorDisk", Status: "Inquiring", DiskID: "d-a0", CanAccept: true})
	f.ecs.InjectEvent(cloud.FakeEvent{ID: "e-free", InstanceID: "i-a", Type: "SystemMaintenance.IsolateErrorDisk", Status: "Inquiring", DiskID: "d-a1", CanAccept: true})
	f.sync()
	if got := f.ecs.AcceptedEvents(); len(got) != 0 {
		t.Fatalf("accepted %v in the pass that marked the disks, before their node applied the marks", got)
	}
	f.stepEvents()
	if got := f.ecs.AcceptedEvents(); len(got) != 0 {
		t.Fatalf("accepted %v before the node applied the marks", got)
	}
	f.nodesApply()
	f.stepEvents()
	if got := f.ecs.AcceptedEvents(); !slices.Equal(got, []string{"e-free"}) {
		t.Fatalf("accepted %v, want only the event of the disk without a volume", got)
	}
	if !f.rec.has(ReasonEventAccepted, "/a-d1") {
		t.Errorf("events %q", f.rec.events)
	}
}

func TestLostVolume(t *testing.T) {
	for _, onLoss := range []string{"", v1alpha1.OnDiskLossRecreate} {
		objs := damageWorld(onLoss)
		for _, o := range objs {
			if u, ok := o.(*unstructured.Unstructured); ok && u.GetName() == "a-d0" {
				unstructured.SetNestedField(u.Object, "the disk reads blank where ext4 (UUID 1234) was", "status", "volume", "lost")
			}
		}
		f := newFixture(t, false, objs...)
		f.evictions()
		f.sync()
		f.clock.Step(time.Second)
		f.sync()
		if !f.rec.has(ReasonVolumeLost, "shop/data-web-0") || !f.rec.has(ReasonVolumeLost, "/pv-web-0") || !f.rec.has(ReasonVolumeLost, "shop/web-0") {
			t.Errorf("onDiskLoss %q: events %q", onLoss, f.rec.events)
		}
		if gone := !f.exists("pvc", "shop", "data-web-0"); gone != (onLoss == v1alpha1.OnDiskLossRecreate) {
			t.Errorf("onDiskLoss %q: claim deleted %v", onLoss, gone)
		}
	}
}

// Once the lost volume's claim was recreated under its name, the new claim
// and its pod are not told about the old volume.
func TestLostVolumeLeavesTheNewClaimAlone(t *testing.T) {
	objs := damageWorld(v1alpha1.OnDiskLossRecreate)
	for _, o := range objs {
		switch o := o.(type) {
		case *unstructured.Unstructured:
			if o.GetName() == "a-d0" {
				unstructured.SetNestedField(o.Object, "the disk reads blank", "status", "volume", "lost")
			}
		case *corev1.PersistentVolumeClaim:
			if o.Name == "data-web-0" {
				o.UID = "pvc-uid-recreated"
			}
		}
	}
	f := newFixture(t, false, objs...)
	evicted := f.evictions()
	f.sync()
	f.sync()
	if !f.rec.has(ReasonVolumeLost, "/pv-web-0") {
		t.Fatalf("the lost PV not told: %q", f.rec.events)
	}
	if f.rec.has(ReasonVolumeLost, "shop/data-web-0") || f.rec.has(ReasonVolumeLost, "shop/web-0") || len(*evicted) > 0 || !f.exists("pvc", "shop", "data-web-0") {
		t.Fatalf("the new claim or its pod touched: events %q, evicted %v", f.rec.events, *evicted)
	}
}

// A damaged disk whose volume has no PV name (adopted after the state was
// lost) still holds a volume: its event is never accepted.
func TestAcceptNeverWithAnUnnamedVolume(t *testing.T) {
	objs := slices.DeleteFunc(damageWorld(""), func(o runtime.Object) bool {
		u, ok := o.(*unstructured.Unstructured)
		return ok && u.GetName() == "a-d1"
	})
	d := diskWithVolume("a", "d1", "i-a", "d-a1", "")
	unstructured.SetNestedMap(d.Object, map[string]any{"id": "adopted-volume"}, "status", "volume")
	f := newFixture(t, true, append(objs, d)...)
	f.c.cfg.AcceptDiskEvents = true
	f.ecs.InjectEvent(cloud.FakeEvent{ID: "e-x", InstanceID: "i-a", Type: "SystemMaintenance.ReInitErrorDisk", Status: "Inquiring", DiskID: "d-a1", CanAccept: true})
	f.sync()
	f.nodesApply()
	f.stepEvents()
	f.stepEvents()
	if got := f.ecs.AcceptedEvents(); len(got) != 0 {
		t.Fatalf("accepted %v for a disk that holds a volume", got)
	}
}

// A LocalDisk whose status names another node's PV (stale, or written by
// a compromised node) never makes the controller act on that volume.
func TestStatusNamingAnotherVolumeIsIgnored(t *testing.T) {
	objs := damageWorld(v1alpha1.OnDiskLossRecreate)
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok && u.GetName() == "b-d0" {
			unstructured.SetNestedMap(u.Object, map[string]any{"id": "b#other", "persistentVolume": "pv-web-0", "lost": "reads blank"}, "status", "volume")
		}
	}
	f := newFixture(t, false, objs...)
	evicted := f.evictions()
	f.sync()
	f.clock.Step(time.Second)
	f.sync()
	if !f.exists("pvc", "shop", "data-web-0") || len(*evicted) > 0 || f.rec.has(ReasonVolumeLost, "/pv-web-0") {
		t.Fatalf("acted on node a's volume on node b's word: evicted %v, events %q", *evicted, f.rec.events)
	}
}

func TestUsesClaim(t *testing.T) {
	p := pod("web-0", "data-web-0", "a", corev1.PodRunning)
	eph := pod("cache-0", "", "a", corev1.PodRunning)
	eph.Spec.Volumes[0] = corev1.Volume{Name: "scratch", VolumeSource: corev1.VolumeSource{Ephemeral: &corev1.EphemeralVolumeSource{}}}
	for _, c := range []struct {
		p     *corev1.Pod
		claim string
		want  bool
	}{{p, "data-web-0", true}, {p, "data-web-1", false}, {eph, "cache-0-scratch", true}, {eph, "cache-0-data", false}} {
		if got := usesClaim(c.p, c.claim); got != c.want {
			t.Errorf("%s uses %s: %v", c.p.Name, c.claim, got)
		}
	}
}

// After a restart the controller did not see the claim's deletion: only
// pods clearly older than it are the lost claim's, not one made within the
// skew of the two API servers' clocks.
func TestPodsOfAClaimDeletedBeforeARestart(t *testing.T) {
	objs := damageWorld(v1alpha1.OnDiskLossRecreate)
	deleted := metav1.NewTime(time.Date(2026, 12, 1, 0, 0, 10, 0, time.UTC))
	var old, fresh *corev1.Pod
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.PersistentVolumeClaim:
			if o.Name == "data-web-0" {
				o.DeletionTimestamp = &deleted
				o.Finalizers = append(o.Finalizers, "example.com/hold")
			}
		case *corev1.Pod:
			if o.Name == "web-0" {
				old = o
				old.CreationTimestamp = metav1.NewTime(deleted.Add(-time.Hour))
			}
		}
	}
	fresh = pod("web-0b", "data-web-0", "", corev1.PodPending)
	fresh.CreationTimestamp = metav1.NewTime(deleted.Add(-time.Second)) // within the skew
	objs = append(objs, fresh)
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok && u.GetName() == "a-d0" {
			unstructured.SetNestedField(u.Object, "reads blank", "status", "volume", "lost")
		}
	}
	f := newFixture(t, false, objs...)
	evicted := f.evictions()
	f.sync()
	if !slices.Equal(*evicted, []string{old.Name}) {
		t.Fatalf("evicted %v, want only %s", *evicted, old.Name)
	}
}
