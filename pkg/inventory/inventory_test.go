package inventory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

func dsk(i int, size int64) disk.Disk {
	return disk.Disk{ID: fmt.Sprintf("serial-%d", i), Identity: fmt.Sprintf("serial:%d", i), Path: fmt.Sprintf("/dev/f%d", i), SizeBytes: size, Media: disk.MediaSSD}
}

// addDevices registers the source's disks with the fake mounter, blank,
// so that the checks before allocation and cleanup find them.
func addDevices(src *disk.FakeSource, m *mounter.Fake) {
	found, _, _ := src.Discover(context.Background())
	for i, d := range found {
		if _, ok := m.Device(d.Path); !ok {
			m.AddDevice(d.Path, d.SizeBytes, 250, uint32(i))
		}
	}
}

func start(t *testing.T, dir string, src *disk.FakeSource, m *mounter.Fake) *Inventory {
	t.Helper()
	addDevices(src, m)
	inv := New(Config{Node: "n1", Source: src, Store: state.NewStore(dir), Mounter: m, RetryInterval: 10 * time.Millisecond})
	if err := inv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inv.Stop)
	return inv
}

func TestReconcileExcludesWhatIsNotOurs(t *testing.T) {
	good := dsk(0, 100)
	sys, mnt, part, dm, held, ro, sig, zero := dsk(1, 100), dsk(2, 100), dsk(3, 100), dsk(4, 100), dsk(5, 100), dsk(6, 100), dsk(7, 100), dsk(8, 0)
	sys.Facts.System = true
	mnt.Facts.Mounted = true
	part.Facts.Partitioned = true
	dm.Facts.DeviceMapper = true
	held.Facts.Holders = []string{"dm-3"}
	ro.Facts.ReadOnly = true
	sig.Facts.Signatures = []string{"gpt"}
	dup := dsk(0, 100)
	dup.Path = "/dev/other"
	src := disk.NewFakeSource(good, sys, mnt, part, dm, held, ro, sig, zero)
	inv := start(t, t.TempDir(), src, mounter.NewFake())
	rec, excluded := inv.Snapshot()
	if len(rec.Disks) != 1 || rec.Disks["serial-0"] == nil {
		t.Fatalf("managed: %v", rec.Disks)
	}
	want := []string{"system disk", "mounted", "has partitions", "device-mapper", "in use by dm-3", "read-only", "gpt", "zero size"}
	if len(excluded) != len(want) {
		t.Fatalf("excluded %d: %+v", len(excluded), excluded)
	}
	for i, e := range excluded {
		if !strings.Contains(e.Reason, want[i]) {
			t.Errorf("excluded[%d] = %q, want it to mention %q", i, e.Reason, want[i])
		}
	}
	// Two devices claiming one identity: neither is used.
	src.Set(good, dup)
	inv2 := start(t, t.TempDir(), src, mounter.NewFake())
	if n := inv2.ManagedDisks(); n != 0 {
		t.Fatalf("managed %d disks with a duplicated identity", n)
	}
}

func TestReconcileKeepsOwnedDisks(t *testing.T) {
	dir := t.TempDir()
	a, b := dsk(0, 100), dsk(1, 100)
	src := disk.NewFakeSource(a, b)
	inv := start(t, dir, src, mounter.NewFake())
	v, err := inv.Allocate(context.Background(), Request{Name: "v", CleanupPolicy: "signatures"})
	if err != nil {
		t.Fatal(err)
	}
	inv.Stop()
	// The allocated disk now carries its filesystem and is mounted; the free
	// one gained a foreign filesystem; both are expected or excluded accordingly.
	owned := a
	if v.Disk.ID == b.ID {
		owned = b
	}
	owned.Facts = disk.Facts{Mounted: true, Signatures: []string{"ext4"}}
	other := a
	if owned.ID == a.ID {
		other = b
	}
	other.Facts.Signatures = []string{"xfs"}
	src.Set(owned, other)
	inv = start(t, dir, src, mounter.NewFake())
	if _, err := inv.Lookup(v.ID); err != nil {
		t.Fatalf("owned volume lost: %v", err)
	}
	rec, excluded := inv.Snapshot()
	if len(rec.Disks) != 2 || rec.Disks[other.ID].Status != state.Excluded || len(excluded) != 1 || excluded[0].Disk.ID != other.ID {
		t.Fatalf("disks %v excluded %+v; want the free disk that gained data recorded as excluded", rec.Disks, excluded)
	}
	if inv.ManagedDisks() != 1 {
		t.Fatalf("%d usable disks; the excluded one must not count", inv.ManagedDisks())
	}
	// The owned disk vanishes: its record stays, the volume is missing.
	inv.Stop()
	src.Set()
	inv = start(t, dir, src, mounter.NewFake())
	if _, _, err := inv.Device(context.Background(), v.ID); !errors.Is(err, ErrDeviceMissing) {
		t.Fatalf("Device of a vanished disk: %v", err)
	}
	if inv.ManagedDisks() != 1 {
		t.Fatal("record of a vanished, allocated disk dropped")
	}
}

func TestAllocationIsPersistedBeforeItIsReturned(t *testing.T) {
	dir := t.TempDir()
	inv := start(t, dir, disk.NewFakeSource(dsk(0, 100)), mounter.NewFake())
	v, err := inv.Allocate(context.Background(), Request{Name: "pvc", CleanupPolicy: "zero", Parameters: map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := state.NewStore(dir).Load()
	if err != nil {
		t.Fatal(err)
	}
	d := rec.Disks["serial-0"]
	if d.Status != state.Allocated || d.Volume.ID != v.ID || d.Volume.Name != "pvc" || d.CleanupPolicy != "zero" || d.Volume.FSUUID == "" {
		t.Fatalf("on disk: %+v %+v", d, d.Volume)
	}
}

func TestFailedSaveAllocatesNothing(t *testing.T) {
	dir := t.TempDir()
	inv := start(t, filepath.Join(dir, "state"), disk.NewFakeSource(dsk(0, 100)), mounter.NewFake())
	// Make the state directory unwritable by replacing it with a file.
	inv.cfg.Store = state.NewStore(filepath.Join(dir, "state", "state.json", "sub"))
	if _, err := inv.Allocate(context.Background(), Request{Name: "pvc"}); err == nil {
		t.Fatal("allocation succeeded without being saved")
	}
	if a, _, _ := inv.Capacity(context.Background(), Filter{}); a != 100 {
		t.Fatalf("capacity %d after a failed save, want 100", a)
	}
}

// TestConcurrentAllocation: many parallel requests for distinct names on a
// node with 4 disks give exactly 4 volumes on 4 different disks; many parallel
// requests for one name give one disk.
func TestConcurrentAllocation(t *testing.T) {
	var disks []disk.Disk
	for i := 0; i < 4; i++ {
		disks = append(disks, dsk(i, 100))
	}
	inv := start(t, t.TempDir(), disk.NewFakeSource(disks...), mounter.NewFake())
	var wg sync.WaitGroup
	var mu sync.Mutex
	got, exhausted := map[string]string{}, 0
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			v, err := inv.Allocate(context.Background(), Request{Name: fmt.Sprintf("pvc-%d", i)})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				got[v.Disk.ID] = v.Name
			case errors.Is(err, ErrExhausted):
				exhausted++
			default:
				t.Errorf("unexpected %v", err)
			}
		}(i)
	}
	wg.Wait()
	if len(got) != 4 || exhausted != 96 {
		t.Fatalf("%d disks given, %d exhausted; want 4 and 96", len(got), exhausted)
	}
	inv2 := start(t, t.TempDir(), disk.NewFakeSource(disks...), mounter.NewFake())
	ids := map[string]bool{}
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := inv2.Allocate(context.Background(), Request{Name: "same"})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			ids[v.ID] = true
			mu.Unlock()
		}()
	}
	wg.Wait()
	if a, _, _ := inv2.Capacity(context.Background(), Filter{}); len(ids) != 1 || a != 300 {
		t.Fatalf("one name gave %d volumes, capacity left %d", len(ids), a)
	}
}

func TestParseVolumeID(t *testing.T) {
	id := VolumeID{Node: "cn-hangzhou.192.168.0.1", Disk: "serial-bp1abc", Nonce: "0123456789ab"}
	got, err := ParseVolumeID(id.String())
	if err != nil || got != id {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{"", "ld", "ld:a:b", "xx:n:d:0123456789ab", "ld:n:d:XYZ", "ld:n:d/..:0123456789ab",
		"ld::d:0123456789ab", "ld:n:d:0123456789ab:extra", "ld:" + strings.Repeat("n", 200) + ":d:0123456789ab"} {
		if _, err := ParseVolumeID(bad); err == nil {
			t.Errorf("ParseVolumeID(%q) accepted", bad)
		}
	}
}

// TestCleaningResumesAfterRestart: a disk recorded as cleaning (the process
// died mid-wipe) is wiped at start-up and freed.
func TestCleaningResumesAfterRestart(t *testing.T) {
	dir := t.TempDir()
	rec := state.New("n1")
	rec.Disks["serial-0"] = &state.Disk{ID: "serial-0", Identity: "serial:0", SizeBytes: 100, Media: "ssd", Status: state.Cleaning,
		CleanupPolicy: "discard", Volume: &state.Volume{ID: "ld:n1:serial-0:0123456789ab", Name: "old"}}
	if err := state.NewStore(dir).Save(rec); err != nil {
		t.Fatal(err)
	}
	m := mounter.NewFake()
	m.AddDevice("/dev/f0", 100, 8, 0)
	m.SetSignatures("/dev/f0", disk.Probe{Signatures: []string{"ext4"}, FSType: "ext4"})
	d := dsk(0, 100)
	d.Facts.Signatures = []string{"ext4"} // its old filesystem: ours, being cleaned
	inv := start(t, dir, disk.NewFakeSource(d), m)
	if err := inv.WaitIdle(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a, _, _ := inv.Capacity(context.Background(), Filter{}); a != 100 {
		t.Fatalf("capacity %d after resumed cleaning", a)
	}
	if calls := strings.Join(m.Calls(), ";"); !strings.Contains(calls, "wipe /dev/f0 discard") {
		t.Fatalf("no wipe with the recorded policy: %s", calls)
	}
	if _, err := inv.Lookup("ld:n1:serial-0:0123456789ab"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old volume still found: %v", err)
	}
}

// TestCleanupResumesFromItsCheckpoint: a shred cleanup recorded at a
// checkpoint in its zero pass goes on from there after a restart, and
// the freed disk keeps no checkpoint.
func TestCleanupResumesFromItsCheckpoint(t *testing.T) {
	dir := t.TempDir()
	rec := state.New("n1")
	at := &state.CleanupProgress{Pass: 1, Passes: 2, DoneBytes: 40, LengthBytes: 100}
	rec.Disks["serial-0"] = &state.Disk{ID: "serial-0", Identity: "serial:0", SizeBytes: 100, Media: "ssd", Status: state.Cleaning,
		CleanupPolicy: "shred", Cleanup: at, Volume: &state.Volume{ID: "ld:n1:serial-0:0123456789ab", Name: "old"}}
	if err := state.NewStore(dir).Save(rec); err != nil {
		t.Fatal(err)
	}
	m := mounter.NewFake()
	m.AddDevice("/dev/f0", 100, 8, 0)
	var seen []state.CleanupProgress
	m.SetBefore(func(op, arg string) {
		if op == mounter.OpWipe {
			r, _ := state.NewStore(dir).Load()
			seen = append(seen, *r.Disks["serial-0"].Cleanup)
		}
	})
	inv := start(t, dir, disk.NewFakeSource(dsk(0, 100)), m)
	if err := inv.WaitIdle(context.Background()); err != nil {
		t.Fatal(err)
	}
	if calls := strings.Join(m.Calls(), ";"); !strings.Contains(calls, "wipe /dev/f0 shred from pass 1 byte 40") {
		t.Fatalf("the cleanup did not go on from its checkpoint: %s", calls)
	}
	if len(seen) != 1 || seen[0].DoneBytes != 40 {
		t.Fatalf("checkpoint before the wipe: %+v", seen)
	}
	got, _ := inv.Snapshot()
	if d := got.Disks["serial-0"]; d.Status != state.Free || d.Cleanup != nil {
		t.Fatalf("after the cleanup: %+v, checkpoint %+v", d, d.Cleanup)
	}
}

// TestAllocateRefusesOverlongVolumeID: a node ID so long that the volume ID
// would pass the CSI limit of 128 bytes gets an error naming the node, and
// nothing is allocated.
func TestAllocateRefusesOverlongVolumeID(t *testing.T) {
	node := strings.Repeat("n", 120)
	src, m := disk.NewFakeSource(dsk(0, 1<<30)), mounter.NewFake()
	addDevices(src, m)
	inv := New(Config{Node: node, Source: src, Store: state.NewStore(t.TempDir()), Mounter: m})
	if err := inv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer inv.Stop()
	_, err := inv.Allocate(context.Background(), Request{Name: "pvc"})
	if err == nil || !strings.Contains(err.Error(), "too long") || !strings.Contains(err.Error(), node) {
		t.Fatalf("Allocate = %v; want an error naming the overlong node ID", err)
	}
	if avail, _, _ := inv.Capacity(context.Background(), Filter{}); avail != 1<<30 {
		t.Fatalf("capacity %d after the refusal; want the disk still free", avail)
	}
}

// TestLookupNeverWrites: with the state lost, a volume's disk carries the
// filesystem the driver made for it. Lookup and Device, which read-only
// calls use, find no volume and save nothing; Adopt, which only calls that
// may change state use, recovers the volume and saves it.
func TestLookupNeverWrites(t *testing.T) {
	dir := t.TempDir()
	src, m := disk.NewFakeSource(dsk(0, 100)), mounter.NewFake()
	inv := start(t, dir, src, m)
	v, err := inv.Allocate(context.Background(), Request{Name: "pvc"})
	if err != nil {
		t.Fatal(err)
	}
	inv.Stop()
	probe := disk.Probe{Signatures: []string{"ext4"}, FSType: "ext4", UUID: fsUUID(v.ID)}
	m.SetSignatures("/dev/f0", probe)
	d := dsk(0, 100)
	d.Facts.Signatures, d.Facts.FSUUID = probe.Signatures, probe.UUID
	src.Set(d)
	store := state.NewStore(dir)
	for _, p := range []string{store.Path(), store.BackupPath()} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	inv = start(t, dir, src, m)
	before, err := os.ReadFile(store.Path())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Lookup(v.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Lookup of a volume the record lost: %v, want ErrNotFound", err)
	}
	if _, _, err := inv.Device(context.Background(), v.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Device of a volume the record lost: %v, want ErrNotFound", err)
	}
	if after, _ := os.ReadFile(store.Path()); !bytes.Equal(before, after) {
		t.Fatal("a read-only lookup saved the state")
	}
	got, err := inv.Adopt(context.Background(), v.ID)
	if err != nil || got.ID != v.ID || got.Format != state.FormatDone {
		t.Fatalf("Adopt = %+v, %v; want the volume recovered", got, err)
	}
	if after, _ := os.ReadFile(store.Path()); bytes.Equal(before, after) {
		t.Fatal("Adopt did not save the recovered volume")
	}
}

// TestReleaseRetriesWhenTheDiskCannotBeRead: with the state lost, a volume
// lives on only in its disk's filesystem. A DeleteVolume whose look at the
// disk fails once (a transient probe failure) must not answer OK, which
// would make the CO forget a volume whose disk then stays excluded with its
// data; the retry records the release.
func TestReleaseRetriesWhenTheDiskCannotBeRead(t *testing.T) {
	dir := t.TempDir()
	a := dsk(0, 100)
	src, m := disk.NewFakeSource(a), mounter.NewFake()
	inv := start(t, dir, src, m)
	ctx := context.Background()
	v, err := inv.Allocate(ctx, Request{Name: "v", CleanupPolicy: "signatures"})
	if err != nil {
		t.Fatal(err)
	}
	if err := inv.PrepareFilesystem(ctx, v, a.Path, "ext4", nil); err != nil {
		t.Fatal(err)
	}
	inv.Stop()
	store := state.NewStore(dir)
	for _, p := range []string{store.Path(), store.BackupPath()} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	a.Facts.Signatures = []string{"ext4"}
	src.Set(a)
	inv = start(t, dir, src, m)
	m.FailNext(mounter.OpProbe, errors.New("blkid: transient failure"))
	if err := inv.Release(ctx, v.ID); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("Release with the disk unreadable = %v; want an error to retry on", err)
	}
	if err := inv.Release(ctx, v.ID); err != nil {
		t.Fatalf("retried Release: %v", err)
	}
	rec, _ := inv.Snapshot()
	if d := rec.Disks[a.ID]; d == nil || (d.Status != state.Cleaning && d.Status != state.Free) {
		t.Fatalf("after the retried release the disk is %+v; want it cleaning or clean", d)
	}
}

// TestCordon: a cordoned free disk leaves capacity and is never allocated;
// a cordoned allocated disk keeps its volume and, once cleaned, stays out;
// the cordon outlives a restart and applies to a disk found later; an
// uncordoned disk is allocatable again.
func TestCordon(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	m := mounter.NewFake()
	src := disk.NewFakeSource(dsk(0, 100), dsk(1, 200))
	inv := start(t, dir, src, m)
	capacity := func(inv *Inventory) int64 {
		t.Helper()
		a, _, err := inv.Capacity(ctx, Filter{})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	if changed, err := inv.SetCordoned("serial-0", true); err != nil || !changed {
		t.Fatalf("cordon: %v %v", changed, err)
	}
	if changed, err := inv.SetCordoned("serial-0", true); err != nil || changed {
		t.Fatalf("cordon again: %v %v", changed, err)
	}
	if a := capacity(inv); a != 200 {
		t.Fatalf("capacity with serial-0 cordoned: %d", a)
	}
	v, err := inv.Allocate(ctx, Request{Name: "pvc-1", RequiredBytes: 50})
	if err != nil || v.Disk.ID != "serial-1" {
		t.Fatalf("allocation with the smaller disk cordoned: %+v %v", v.Disk, err)
	}
	if _, err := inv.Allocate(ctx, Request{Name: "pvc-2"}); !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "1 of them cordoned") {
		t.Fatalf("allocation with only a cordoned disk free: %v", err)
	}
	// Cordon the allocated disk: the volume stays; after cleanup the disk
	// stays out.
	if _, err := inv.SetCordoned("serial-1", true); err != nil {
		t.Fatal(err)
	}
	if _, err := inv.Lookup(v.ID); err != nil {
		t.Fatalf("volume on a cordoned disk: %v", err)
	}
	if err := inv.Release(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if err := inv.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if rec, _ := inv.Snapshot(); rec.Disks["serial-1"].Status != state.Free {
		t.Fatalf("cleaned cordoned disk: %+v", rec.Disks["serial-1"])
	}
	if a := capacity(inv); a != 0 {
		t.Fatalf("capacity with both disks cordoned: %d", a)
	}
	// A disk not managed yet can be cordoned; the cordon holds when it
	// appears, and after a restart.
	if _, err := inv.SetCordoned("serial-2", true); err != nil {
		t.Fatal(err)
	}
	inv.Stop()
	src.Set(dsk(0, 100), dsk(1, 200), dsk(2, 300))
	inv = start(t, dir, src, m)
	if a := capacity(inv); a != 0 {
		t.Fatalf("capacity after restart, all cordoned: %d", a)
	}
	if _, err := inv.SetCordoned("serial-2", false); err != nil {
		t.Fatal(err)
	}
	if a := capacity(inv); a != 300 {
		t.Fatalf("capacity with serial-2 uncordoned: %d", a)
	}
	if v, err := inv.Allocate(ctx, Request{Name: "pvc-3"}); err != nil || v.Disk.ID != "serial-2" {
		t.Fatalf("allocation after uncordon: %+v %v", v.Disk, err)
	}
}

// TestDamaged: a disk the cloud reports damaged leaves capacity and
// allocation, the volume on one says why, its cleanup still runs, and the
// mark holds across a restart until it is lifted.
func TestDamaged(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	m := mounter.NewFake()
	src := disk.NewFakeSource(dsk(0, 100), dsk(1, 200))
	inv := start(t, dir, src, m)
	v, err := inv.Allocate(ctx, Request{Name: "pvc-1", RequiredBytes: 150})
	if err != nil || v.Disk.ID != "serial-1" {
		t.Fatalf("allocation: %+v %v", v.Disk, err)
	}
	const why = "ECS event e-1: SystemMaintenance.IsolateErrorDisk (Inquiring)"
	for _, id := range []string{"serial-0", "serial-1"} {
		if changed, err := inv.SetDamaged(id, why); err != nil || !changed {
			t.Fatalf("damage %s: %v %v", id, changed, err)
		}
	}
	if changed, err := inv.SetDamaged("serial-0", why); err != nil || changed {
		t.Fatalf("damage again: %v %v", changed, err)
	}
	if a, _, err := inv.Capacity(ctx, Filter{}); err != nil || a != 0 {
		t.Fatalf("capacity with the free disk damaged: %d %v", a, err)
	}
	if _, err := inv.Allocate(ctx, Request{Name: "pvc-2"}); !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "1 damaged") {
		t.Fatalf("allocation with only a damaged disk free: %v", err)
	}
	if got, err := inv.Lookup(v.ID); err != nil || got.Damaged != why {
		t.Fatalf("volume on a damaged disk: %+v %v", got.Damaged, err)
	}
	views := map[string]DiskView{}
	for _, dv := range inv.View() {
		views[dv.ID] = dv
	}
	if views["serial-0"].Shown() != StatusDamaged || views["serial-1"].Shown() != StatusDamaged || views["serial-1"].Damaged != why {
		t.Fatalf("views %+v", views)
	}
	if err := inv.Release(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if err := inv.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	inv.Stop()
	inv = start(t, dir, src, m)
	if a, _, _ := inv.Capacity(ctx, Filter{}); a != 0 {
		t.Fatalf("capacity after a restart, both damaged: %d", a)
	}
	if _, err := inv.SetDamaged("serial-1", ""); err != nil {
		t.Fatal(err)
	}
	if a, _, _ := inv.Capacity(ctx, Filter{}); a != 200 {
		t.Fatalf("capacity once serial-1 is no longer damaged: %d", a)
	}
}

// recordingObserver counts what the inventory tells its observer.
type recordingObserver struct {
	mu             sync.Mutex
	saves, changes int
	failed         []string
}

func (o *recordingObserver) StateSaved(time.Duration, error) { o.mu.Lock(); o.saves++; o.mu.Unlock() }
func (o *recordingObserver) Changed()                        { o.mu.Lock(); o.changes++; o.mu.Unlock() }
func (o *recordingObserver) CleanupFailed(d state.Disk, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failed = append(o.failed, d.ID+": "+err.Error())
}

// TestFailedCleanupKeepsItsFirstFailureTime: a cleanup failing again and
// again is reported to the observer each time, and its disk's UpdatedAt
// stays the time it first failed (the age operators alert on); saves and
// changes are reported.
func TestFailedCleanupKeepsItsFirstFailureTime(t *testing.T) {
	ctx := context.Background()
	m := mounter.NewFake()
	src := disk.NewFakeSource(dsk(0, 100))
	addDevices(src, m)
	obs := &recordingObserver{}
	inv := New(Config{Node: "n1", Source: src, Store: state.NewStore(t.TempDir()), Mounter: m, RetryInterval: 10 * time.Millisecond, Observer: obs})
	if err := inv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inv.Stop)
	v, err := inv.Allocate(ctx, Request{Name: "pvc-1", CleanupPolicy: "zero"})
	if err != nil {
		t.Fatal(err)
	}
	m.SetError(mounter.OpWipe, errors.New("I/O error"))
	if err := inv.Release(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	var first time.Time
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		obs.mu.Lock()
		n := len(obs.failed)
		obs.mu.Unlock()
		rec, _ := inv.Snapshot()
		d := rec.Disks["serial-0"]
		if n >= 1 && first.IsZero() {
			first = d.UpdatedAt
		}
		if n >= 3 {
			if d.Status != state.Failed || !d.UpdatedAt.Equal(first) {
				t.Fatalf("after %d failures: %s since %v, first failure at %v", n, d.Status, d.UpdatedAt, first)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d failures reported in 10s", n)
		}
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if !strings.Contains(obs.failed[0], "serial-0: ") || !strings.Contains(obs.failed[0], "I/O error") {
		t.Fatalf("failure reported as %q", obs.failed[0])
	}
	if obs.saves < 3 || obs.changes < 3 {
		t.Fatalf("%d saves and %d changes reported", obs.saves, obs.changes)
	}
}
