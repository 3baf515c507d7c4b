package cloud

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestInstances: DescribeInstances in batches of 100; a released instance
// is absent from the answer.
func TestInstances(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	var ids []string
	for i := range 150 {
		id := fmt.Sprintf("i-%03d", i)
		ids = append(ids, id)
		f.Update(func(f *Fake) { f.Instances[id] = "Running" })
	}
	f.Update(func(f *Fake) { f.Instances["i-007"] = "Stopped" })
	f.Release("i-042")
	got, err := newAPI(t, f, nil).Instances(ctx, append(ids, "i-never"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 149 || got["i-007"].Status != "Stopped" || got["i-000"].Status != "Running" {
		t.Fatalf("%d instances: %+v", len(got), got["i-007"])
	}
	if _, ok := got["i-042"]; ok {
		t.Fatal("a released instance is reported")
	}
	calls := 0
	for _, c := range f.APICalls() {
		if c["Action"] == "DescribeInstances" {
			calls++
		}
	}
	if calls != 2 {
		t.Fatalf("%d DescribeInstances calls for 151 IDs, want 2 batches", calls)
	}
}

// TestActiveEvents: the Inquiring and Executing events of the instances
// asked about, of the types asked for, across pages; finished events and
// other instances' are not reported. AcceptEvent consents to an Inquiring
// event once; an unknown or finished one fails.
func TestActiveEvents(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	api := newAPI(t, f, nil)
	for i := range 25 {
		f.InjectEvent(FakeEvent{ID: fmt.Sprintf("e-%02d", i), InstanceID: testInstance.ID, Type: "SystemMaintenance.IsolateErrorDisk",
			Status: "Inquiring", DiskID: fmt.Sprintf("d-%02d", i), Device: "/dev/vdb", CanAccept: true})
	}
	f.InjectEvent(FakeEvent{ID: "e-done", InstanceID: testInstance.ID, Type: "SystemMaintenance.IsolateErrorDisk", Status: "Executed", DiskID: "d-x"})
	f.InjectEvent(FakeEvent{ID: "e-other", InstanceID: "i-other", Type: "SystemMaintenance.IsolateErrorDisk", Status: "Inquiring", DiskID: "d-y"})
	f.InjectEvent(FakeEvent{ID: "e-reboot", InstanceID: testInstance.ID, Type: "SystemMaintenance.Reboot", Status: "Inquiring"})
	f.InjectEvent(FakeEvent{ID: "e-err", InstanceID: testInstance.ID, Type: "Disk:ErrorDetected", Status: "Executing", DiskID: "d-z"})

	got, err := api.ActiveEvents(ctx, []string{testInstance.ID}, "SystemMaintenance.IsolateErrorDisk", "Disk:ErrorDetected")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range got {
		ids = append(ids, e.ID)
	}
	slices.Sort(ids)
	// Disk:ErrorDetected is a disk's event: DiskErrors reads it.
	if len(got) != 25 || slices.Contains(ids, "e-err") || slices.Contains(ids, "e-done") || slices.Contains(ids, "e-other") || slices.Contains(ids, "e-reboot") {
		t.Fatalf("events %v", ids)
	}
	e := got[0]
	if e.InstanceID != testInstance.ID || e.DiskID == "" || e.Device != "/dev/vdb" || !e.CanAccept || e.Status != "Inquiring" || e.Type != "SystemMaintenance.IsolateErrorDisk" {
		t.Fatalf("event %+v", e)
	}
	if err := api.AcceptEvent(ctx, "e-03"); err != nil {
		t.Fatal(err)
	}
	if err := api.AcceptEvent(ctx, "e-03"); err == nil || !strings.Contains(err.Error(), "IncorrectEventStatus") {
		t.Fatalf("accepting an event twice: %v", err)
	}
	if err := api.AcceptEvent(ctx, "e-none"); err == nil || !strings.Contains(err.Error(), "InvalidEventId.NotFound") {
		t.Fatalf("accepting an unknown event: %v", err)
	}
	if got := f.AcceptedEvents(); len(got) != 1 || got[0] != "e-03" {
		t.Fatalf("accepted %v", got)
	}
}

// TestAddInstance: one fake serves several instances, each its own
// metadata, all through one API; a released one is gone from the API.
func TestAddInstance(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	url := f.AddInstance(Instance{ID: "i-second", Type: "ecs.i4.large", Region: "cn-hangzhou", Zone: "cn-hangzhou-j"})
	in, err := NewMetadata(url).Instance(ctx)
	if err != nil || in.ID != "i-second" || in.Zone != "cn-hangzhou-j" {
		t.Fatalf("second instance's metadata: %+v %v", in, err)
	}
	if first, err := NewMetadata(f.Metadata.URL).Instance(ctx); err != nil || first.ID != testInstance.ID {
		t.Fatalf("first instance's metadata: %+v %v", first, err)
	}
	api := newAPI(t, f, nil)
	got, err := api.Instances(ctx, []string{testInstance.ID, "i-second"})
	if err != nil || len(got) != 2 {
		t.Fatalf("instances %v %v", got, err)
	}
	f.Release("i-second")
	if got, err := api.Instances(ctx, []string{testInstance.ID, "i-second"}); err != nil || len(got) != 1 {
		t.Fatalf("after release: %v %v", got, err)
	}
}

// TestDiskErrors: ErrorDetected events of the disks asked about, in calls
// of at most 100 disks; an ended one is over.
func TestDiskErrors(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	var disks []string
	for i := range 130 {
		disks = append(disks, fmt.Sprintf("d-%03d", i))
	}
	f.InjectEvent(FakeEvent{ID: "e-1", InstanceID: testInstance.ID, Type: DiskErrorEvent, Status: "Executing", DiskID: "d-007", Device: "/dev/vdc"})
	f.InjectEvent(FakeEvent{ID: "e-2", InstanceID: testInstance.ID, Type: DiskErrorEvent, Status: "Executing", DiskID: "d-120"})
	f.InjectEvent(FakeEvent{ID: "e-3", InstanceID: testInstance.ID, Type: DiskErrorEvent, Status: "Executed", DiskID: "d-008"})
	f.InjectEvent(FakeEvent{ID: "e-4", InstanceID: testInstance.ID, Type: DiskErrorEvent, Status: "Executing", DiskID: "d-unasked"})
	f.InjectEvent(FakeEvent{ID: "e-5", InstanceID: testInstance.ID, Type: "SystemMaintenance.IsolateErrorDisk", Status: "Inquiring", DiskID: "d-009"})
	got, err := newAPI(t, f, nil).DiskErrors(ctx, disks, time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != "e-1" || got[0].DiskID != "d-007" || got[0].Device != "/dev/vdc" || got[0].InstanceID != testInstance.ID ||
		got[0].Type != DiskErrorEvent || got[1].DiskID != "d-120" {
		t.Fatalf("disk errors %+v", got)
	}
	calls := 0
	for _, c := range f.APICalls() {
		if c["Action"] == "DescribeDisksFullStatus" {
			calls++
		}
	}
	if calls != 2 {
		t.Fatalf("%d calls for 130 disks, want 2", calls)
	}
}

// TestReplaceDisk: the fake's repair of a damaged disk lists the new disk
// in place of the old one, and an ended event is no longer active.
func TestReplaceDisk(t *testing.T) {
	ctx := context.Background()
	f := newFake(t)
	fakeDisks(f, 2)
	f.InjectEvent(FakeEvent{ID: "e-1", InstanceID: testInstance.ID, Type: "SystemMaintenance.IsolateErrorDisk", Status: "Inquiring", DiskID: "d-bp1local000", CanAccept: true})
	api := newAPI(t, f, nil)
	if err := api.AcceptEvent(ctx, "e-1"); err != nil {
		t.Fatal(err)
	}
	if !f.ReplaceDisk("d-bp1local000", FakeDisk{ID: "d-new", Category: "local_ssd_pro", InstanceID: testInstance.ID, Serial: "new", SizeGiB: 1788}) || f.ReplaceDisk("d-none", FakeDisk{}) {
		t.Fatal("ReplaceDisk")
	}
	f.FinishEvent("e-1")
	if evs, err := api.ActiveEvents(ctx, []string{testInstance.ID}); err != nil || len(evs) != 0 {
		t.Fatalf("active events after the repair: %v %v", evs, err)
	}
	disks, err := api.InstanceDisks(ctx, testInstance.ID)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range disks {
		ids = append(ids, d.ID)
	}
	if !slices.Contains(ids, "d-new") || slices.Contains(ids, "d-bp1local000") {
		t.Fatalf("disks after the repair: %v", ids)
	}
}
