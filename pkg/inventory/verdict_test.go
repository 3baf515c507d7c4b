package inventory

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// probes counts the probes m ran since the last count.
type probes struct {
	m    *mounter.Fake
	seen int
}

func (p *probes) since() map[string]int {
	calls := p.m.Calls()
	out := map[string]int{}
	for _, c := range calls[p.seen:] {
		if dev, ok := strings.CutPrefix(c, "probe "); ok {
			out[dev]++
		}
	}
	p.seen = len(calls)
	return out
}

func capacityOf(t *testing.T, inv *Inventory) int64 {
	t.Helper()
	a, _, err := inv.Capacity(context.Background(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestCapacityProbesOnlyChangedDisks: a free disk found blank is not
// probed again while the device shows no write; a disk another actor
// writes is probed at the next call and excluded if it now carries
// anything, and a write that leaves no signature keeps the disk counted.
func TestCapacityProbesOnlyChangedDisks(t *testing.T) {
	src := disk.NewFakeSource(dsk(0, 100), dsk(1, 100), dsk(2, 100))
	m := mounter.NewFake()
	inv := start(t, t.TempDir(), src, m)
	p := &probes{m: m}
	p.since()
	if a := capacityOf(t, inv); a != 300 {
		t.Fatalf("capacity %d", a)
	}
	if got := p.since(); len(got) != 3 {
		t.Fatalf("first call probed %v; want each disk once", got)
	}
	if a := capacityOf(t, inv); a != 300 {
		t.Fatalf("capacity %d", a)
	}
	if got := p.since(); len(got) != 0 {
		t.Fatalf("second call probed %v; want none", got)
	}
	m.SetSignatures("/dev/f1", disk.Probe{FSType: "ext4", Signatures: []string{"ext4"}})
	m.SetContent("/dev/f2", "bytes without a signature")
	if a := capacityOf(t, inv); a != 200 {
		t.Fatalf("capacity %d after another actor formatted a free disk; want 200", a)
	}
	if got := p.since(); len(got) != 2 || got["/dev/f1"] != 1 || got["/dev/f2"] != 1 {
		t.Fatalf("probed %v; want the two written disks", got)
	}
	rec, _ := inv.Snapshot()
	if d := rec.Disks["serial-1"]; d.Status != state.Excluded || !strings.Contains(d.Reason, "ext4") {
		t.Fatalf("formatted disk: %+v", d)
	}
}

// TestCapacityNoticesOtherMedia: other media behind the same device node
// (same device number, write counter as before) is never counted on the
// old disk's verdict: it is checked in full.
func TestCapacityNoticesOtherMedia(t *testing.T) {
	src := disk.NewFakeSource(dsk(0, 100), dsk(1, 100))
	m := mounter.NewFake()
	inv := start(t, t.TempDir(), src, m)
	if a := capacityOf(t, inv); a != 200 {
		t.Fatalf("capacity %d", a)
	}
	old, _ := m.Device("/dev/f0")
	m.RemoveDevice("/dev/f0")
	m.AddDevice("/dev/f0", 100, 250, 0)
	m.Scribble("/dev/f0", disk.Probe{FSType: "xfs", Signatures: []string{"xfs"}})
	if now, _ := m.Device("/dev/f0"); now.Rdev != old.Rdev || now.Writes != old.Writes {
		t.Fatalf("the new media should look the same to the counters: %+v, %+v", now, old)
	}
	if a := capacityOf(t, inv); a != 100 {
		t.Fatalf("capacity %d with other media carrying xfs behind /dev/f0; want 100", a)
	}
}

// TestCapacityProbesAgainAfterMaxAge: data the counters do not show (still
// in a writer's page cache) may count until the verdict is ProbeMaxAge
// old; then a background probe finds it and the disk is excluded. An
// allocation never relies on the verdict: it probes in full.
func TestCapacityProbesAgainAfterMaxAge(t *testing.T) {
	ctx := context.Background()
	startAged := func(t *testing.T) (*Inventory, *mounter.Fake) {
		src := disk.NewFakeSource(dsk(0, 100), dsk(1, 100))
		m := mounter.NewFake()
		addDevices(src, m)
		inv := New(Config{Node: "n1", Source: src, Store: state.NewStore(t.TempDir()), Mounter: m,
			RetryInterval: 10 * time.Millisecond, ProbeMaxAge: 50 * time.Millisecond})
		if err := inv.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(inv.Stop)
		if a := capacityOf(t, inv); a != 200 {
			t.Fatalf("capacity %d", a)
		}
		return inv, m
	}
	t.Run("allocation", func(t *testing.T) {
		inv, m := startAged(t)
		m.Scribble("/dev/f0", disk.Probe{FSType: "ext4", Signatures: []string{"ext4"}})
		m.Scribble("/dev/f1", disk.Probe{FSType: "ext4", Signatures: []string{"ext4"}})
		if _, err := inv.Allocate(ctx, Request{Name: "pvc-1"}); !errors.Is(err, ErrExhausted) {
			t.Fatalf("allocation with both disks written on: %v", err)
		}
	})
	t.Run("capacity", func(t *testing.T) {
		inv, m := startAged(t)
		m.Scribble("/dev/f1", disk.Probe{FSType: "xfs", Signatures: []string{"xfs"}})
		deadline := time.Now().Add(5 * time.Second)
		for capacityOf(t, inv) != 100 {
			if time.Now().After(deadline) {
				t.Fatal("a disk carrying xfs still counted 5 s after its verdict expired")
			}
			time.Sleep(20 * time.Millisecond)
		}
		rec, _ := inv.Snapshot()
		if d := rec.Disks["serial-1"]; d.Status != state.Excluded || !strings.Contains(d.Reason, "xfs") {
			t.Fatalf("disk found carrying xfs: %+v", d)
		}
	})
}

// flakySource is a FakeSource whose Identify fails while fail is set.
type flakySource struct {
	*disk.FakeSource
	fail   atomic.Bool
	failed atomic.Int32
}

func (s *flakySource) Identify(ctx context.Context, path string) (string, string, error) {
	if s.fail.Load() {
		s.failed.Add(1)
		return "", "", errors.New("transient: udev/metadata/pin read failed")
	}
	return s.FakeSource.Identify(ctx, path)
}

func startAged(t *testing.T, src disk.Source, fs *disk.FakeSource, m *mounter.Fake, maxAge time.Duration) *Inventory {
	t.Helper()
	addDevices(fs, m)
	inv := New(Config{Node: "n1", Source: src, Store: state.NewStore(t.TempDir()), Mounter: m,
		RetryInterval: 10 * time.Millisecond, ProbeMaxAge: maxAge})
	if err := inv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inv.Stop)
	return inv
}

// TestCapacityNeverCountsAnExpiredVerdict: data the counters cannot show
// is found within ProbeMaxAge, whenever Capacity is called: a verdict
// older than that is never counted on, even with a slow probe.
func TestCapacityNeverCountsAnExpiredVerdict(t *testing.T) {
	fs := disk.NewFakeSource(dsk(0, 100), dsk(1, 100))
	m := mounter.NewFake()
	const maxAge = 50 * time.Millisecond
	inv := startAged(t, fs, fs, m, maxAge)
	if a := capacityOf(t, inv); a != 200 {
		t.Fatalf("capacity %d", a)
	}
	m.Scribble("/dev/f1", disk.Probe{FSType: "xfs", Signatures: []string{"xfs"}})
	m.SetDelay(mounter.OpProbe, 100*time.Millisecond) // blkid + wipefs take time
	time.Sleep(10 * maxAge)                           // the data is 10x ProbeMaxAge old
	if a := capacityOf(t, inv); a != 100 {
		t.Fatalf("capacity %d: a disk carrying xfs for 10x ProbeMaxAge is still counted on its expired verdict", a)
	}
}

// TestCapacityProbesAgainAfterAFailedProbe: a probe that fails for a
// moment (the identity unreadable: a cloud source's pin read, udev) drops
// the verdict and does not stop later probes: data the counters cannot
// show is still found once the failure is over.
func TestCapacityProbesAgainAfterAFailedProbe(t *testing.T) {
	fs := disk.NewFakeSource(dsk(0, 100), dsk(1, 100))
	src := &flakySource{FakeSource: fs}
	m := mounter.NewFake()
	const maxAge = 30 * time.Millisecond
	inv := startAged(t, src, fs, m, maxAge)
	if a := capacityOf(t, inv); a != 200 {
		t.Fatalf("capacity %d", a)
	}
	src.fail.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	for src.failed.Load() < 2 { // both disks' background probes failed
		if time.Now().After(deadline) {
			t.Fatal("no reprobe ran")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, id := range []string{"serial-0", "serial-1"} {
		inv.lockCheck(id)() // the probe has let go of the disk
	}
	src.fail.Store(false) // the hiccup is over
	m.Scribble("/dev/f1", disk.Probe{FSType: "xfs", Signatures: []string{"xfs"}})
	deadline = time.Now().Add(40 * maxAge)
	for capacityOf(t, inv) != 100 {
		if time.Now().After(deadline) {
			inv.mu.Lock()
			v := inv.verdicts["serial-1"]
			inv.mu.Unlock()
			t.Fatalf("disk carrying xfs still counted %v (40x ProbeMaxAge) after a failed probe; verdict %+v", 40*maxAge, v)
		}
		time.Sleep(maxAge / 3)
	}
}

// TestNoBackgroundWorkAfterStop: nothing runs in the background after
// Stop returns, even when calls still arrive (gRPC's Stop does not wait
// for the handlers, and main stops the inventory on its way out): neither
// a fresh probe nor a cleaner for a volume deleted then. What such a call
// does itself is done when it returns; the cleaning waits for the next
// start.
func TestNoBackgroundWorkAfterStop(t *testing.T) {
	fs := disk.NewFakeSource(dsk(0, 100), dsk(1, 100))
	m := mounter.NewFake()
	const maxAge = 20 * time.Millisecond
	addDevices(fs, m)
	dir := t.TempDir()
	inv := New(Config{Node: "n1", Source: fs, Store: state.NewStore(dir), Mounter: m, ProbeMaxAge: maxAge})
	ctx := context.Background()
	if err := inv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := inv.Allocate(ctx, Request{Name: "pvc-1", CleanupPolicy: string(mounter.CleanupZero)})
	if err != nil {
		t.Fatal(err)
	}
	if a := capacityOf(t, inv); a != 100 {
		t.Fatalf("capacity %d", a)
	}
	time.Sleep(2 * maxAge)
	inv.Stop()
	var mu sync.Mutex
	var after []string
	returned := false
	m.SetBefore(func(op, arg string) {
		mu.Lock()
		defer mu.Unlock()
		if returned {
			after = append(after, op+" "+arg)
		}
	})
	_, _, _ = inv.Capacity(ctx, Filter{})
	if err := inv.Release(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	returned = true
	mu.Unlock()
	time.Sleep(10 * maxAge)
	mu.Lock()
	late := after
	mu.Unlock()
	if len(late) > 0 {
		t.Fatalf("work after Stop returned and the calls after it too: %v", late)
	}
	m.SetBefore(nil)
	inv = start(t, dir, fs, m)
	if err := inv.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if rec, _ := inv.Snapshot(); rec.Disks[v.Disk.ID].Status != state.Free {
		t.Fatalf("the deleted volume's disk after a restart: %+v", rec.Disks[v.Disk.ID])
	}
}

// noSeq is the fake on a kernel without diskseq (before 5.15, such as
// Alibaba Cloud Linux 2's 4.19): Counters reports no Media.
type noSeq struct{ *mounter.Fake }

func (n noSeq) Counters(dev string) (mounter.DeviceCounters, error) {
	c, err := n.Fake.Counters(dev)
	c.Media = ""
	return c, err
}

// TestCapacityWithoutDiskseqProbesEveryCall: without diskseq the kernel
// cannot tell other media behind the device node, so no verdict is kept:
// media that keeps the identity and the write counters (a loop device
// attached again to a file at the same path: loop devices keep their
// counters across detach and attach) is probed, and found carrying xfs.
func TestCapacityWithoutDiskseqProbesEveryCall(t *testing.T) {
	fs := disk.NewFakeSource(dsk(0, 100), dsk(1, 100))
	m := mounter.NewFake()
	addDevices(fs, m)
	inv := New(Config{Node: "n1", Source: fs, Store: state.NewStore(t.TempDir()), Mounter: noSeq{m}})
	if err := inv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inv.Stop)
	if a := capacityOf(t, inv); a != 200 {
		t.Fatalf("capacity %d", a)
	}
	m.RemoveDevice("/dev/f0")
	m.AddDevice("/dev/f0", 100, 250, 0)
	m.Scribble("/dev/f0", disk.Probe{FSType: "xfs", Signatures: []string{"xfs"}})
	if a := capacityOf(t, inv); a != 100 {
		t.Fatalf("capacity %d with other media carrying xfs behind /dev/f0 on a kernel without diskseq; want 100", a)
	}
}

// TestAllocateSeesWhatTheCountersMiss: after Capacity found three disks
// blank (their verdicts hold), one gets an xfs the device's counters do
// not show (unflushed), one a partition of the kernel's, and one's device
// node is bind-mounted (another driver's raw volume). CreateVolume, which
// looks at the device in full rather than trust a verdict, gives
// out none of them: each is excluded with what it shows, and the fourth
// disk, untouched, is the one given out.
func TestAllocateSeesWhatTheCountersMiss(t *testing.T) {
	m := mounter.NewFake()
	src := disk.NewFakeSource(dsk(0, 100), dsk(1, 100), dsk(2, 100), dsk(3, 200))
	inv := start(t, t.TempDir(), src, m)
	if a := capacityOf(t, inv); a != 500 {
		t.Fatalf("capacity %d", a)
	}
	m.Scribble("/dev/f0", disk.Probe{Signatures: []string{"xfs"}, FSType: "xfs", UUID: "u-1"})
	m.SetPartitions("/dev/f1", "f1p1")
	if err := m.BindMount("/dev/f2", "/var/lib/kubelet/plugins/other/dev", false); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		v, err := inv.Allocate(context.Background(), Request{Name: "pvc"})
		if err != nil {
			t.Fatal(err)
		}
		if v.Disk.ID != "serial-3" {
			t.Fatalf("CreateVolume gave %s, which another actor changed after it was found blank", v.Disk.ID)
		}
	}
	if d := inv.rec.Disks["serial-0"]; d.Status != state.Excluded || !strings.Contains(d.Reason, "xfs") {
		t.Fatalf("disk with an unflushed xfs: %+v", d)
	}
	for id, why := range map[string]string{"serial-1": "partitions f1p1", "serial-2": "mounted"} {
		if d := inv.rec.Disks[id]; d.Status != state.Excluded || !strings.Contains(d.Reason, why) {
			t.Fatalf("%s in use: %+v, want excluded as %q (free again once unused)", id, d, why)
		}
	}
}
