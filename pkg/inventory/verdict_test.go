package inventory

import (
	"context"
	"errors"
	"strings"
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
