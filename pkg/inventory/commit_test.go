package inventory

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// onDisk loads the record from the files, as a restart would.
func onDisk(t *testing.T, dir string) map[string]string {
	t.Helper()
	rec, err := state.NewStore(dir).Load()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for id, d := range rec.Disks {
		if d.Status == state.Allocated {
			names[d.Volume.Name] = id
		}
	}
	return names
}

// waitChanges waits, bounded, until inv has applied n changes. It never
// blocks on the inventory's lock: a save holding it must fail the test,
// not hang it.
func waitChanges(t *testing.T, inv *Inventory, n uint64) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if inv.mu.TryLock() {
			c := inv.changes
			inv.mu.Unlock()
			if c >= n {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("fewer than %d changes applied after 5 s", n)
}

// TestBurstOfAllocationsSharesSaves: while one allocation's save is being
// written, five more are made; none of them is reported before a save
// holding it is on disk, and one save covers all five.
func TestBurstOfAllocationsSharesSaves(t *testing.T) {
	var disks []disk.Disk
	for i := 0; i < 6; i++ {
		disks = append(disks, dsk(i, 100))
	}
	dir := t.TempDir()
	inv := start(t, dir, disk.NewFakeSource(disks...), mounter.NewFake())
	inv.mu.Lock()
	base := inv.changes
	inv.mu.Unlock()

	entered, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(free) // before Stop, which takes the lock a blocked save may hold
	var mu sync.Mutex
	writes := 0
	inv.beforeWrite = func() error {
		mu.Lock()
		writes++
		first := writes == 1
		mu.Unlock()
		if first {
			close(entered)
			<-release
		}
		return nil
	}
	type result struct {
		name string
		err  error
	}
	results := make(chan result, 6)
	allocate := func(name string) {
		_, err := inv.Allocate(context.Background(), Request{Name: name})
		results <- result{name, err}
	}
	go allocate("a")
	<-entered
	for _, name := range []string{"b", "c", "d", "e", "f"} {
		go allocate(name)
	}
	waitChanges(t, inv, base+6) // with saves under the lock, only "a" is applied
	select {
	case r := <-results:
		t.Fatalf("%s reported before any save finished (err %v)", r.name, r.err)
	case <-time.After(50 * time.Millisecond):
	}
	if got := onDisk(t, dir); len(got) != 0 {
		t.Fatalf("on disk before the first save ended: %v", got)
	}
	free()
	for i := 0; i < 6; i++ {
		if r := <-results; r.err != nil {
			t.Fatalf("%s: %v", r.name, r.err)
		}
	}
	if got := onDisk(t, dir); len(got) != 6 {
		t.Fatalf("on disk after all returned: %v", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if writes != 2 {
		t.Fatalf("%d saves for six allocations made during one save, want 2", writes)
	}
}

// TestUnsavedAllocationIsTakenBack: an allocation whose save fails is
// reported as an error and its disk is free again, in memory and on disk;
// a retry of the name gets a disk once saves work, and only one.
func TestUnsavedAllocationIsTakenBack(t *testing.T) {
	dir := t.TempDir()
	inv := start(t, dir, disk.NewFakeSource(dsk(0, 100), dsk(1, 100)), mounter.NewFake())
	if _, err := inv.Allocate(context.Background(), Request{Name: "kept"}); err != nil {
		t.Fatal(err)
	}
	broken := errors.New("disk full")
	inv.beforeWrite = func() error { return broken }
	if _, err := inv.Allocate(context.Background(), Request{Name: "pvc"}); !errors.Is(err, broken) {
		t.Fatalf("allocation with saves failing: %v", err)
	}
	if a, _, _ := inv.Capacity(context.Background(), Filter{}); a != 100 {
		t.Fatalf("capacity %d after a failed save, want 100", a)
	}
	inv.beforeWrite = nil
	v, err := inv.Allocate(context.Background(), Request{Name: "pvc"})
	if err != nil {
		t.Fatal(err)
	}
	got := onDisk(t, dir)
	if len(got) != 2 || got["pvc"] != v.Disk.ID || got["kept"] == "" {
		t.Fatalf("on disk: %v, want kept and pvc on %s", got, v.Disk.ID)
	}
}

// TestSaveFailureDuringABurst: a failed save fails only the allocations
// it was to carry whose own retry also fails; saves that work afterwards
// carry the others, and every allocation reported is on disk.
func TestSaveFailureDuringABurst(t *testing.T) {
	var disks []disk.Disk
	for i := 0; i < 8; i++ {
		disks = append(disks, dsk(i, 100))
	}
	dir := t.TempDir()
	inv := start(t, dir, disk.NewFakeSource(disks...), mounter.NewFake())
	var mu sync.Mutex
	writes := 0
	inv.beforeWrite = func() error {
		mu.Lock()
		defer mu.Unlock()
		writes++
		if writes%3 == 1 {
			return errors.New("flaky disk")
		}
		return nil
	}
	var wg sync.WaitGroup
	ok := map[string]string{}
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := fmt.Sprintf("pvc-%d", i)
			v, err := inv.Allocate(context.Background(), Request{Name: name})
			if err == nil {
				mu.Lock()
				ok[name] = v.Disk.ID
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	inv.beforeWrite = nil
	got := onDisk(t, dir)
	for name, id := range ok {
		if got[name] != id {
			t.Errorf("%s reported on %s, on disk %q", name, id, got[name])
		}
	}
	// What is free in memory is what the next save records.
	if _, err := inv.Allocate(context.Background(), Request{Name: "last"}); err != nil && !errors.Is(err, ErrExhausted) {
		t.Fatal(err)
	}
	free, _, _ := inv.Capacity(context.Background(), Filter{})
	got = onDisk(t, dir)
	if int64(8-len(got))*100 != free {
		t.Fatalf("on disk %d allocated (%v), capacity %d", len(got), got, free)
	}
}
