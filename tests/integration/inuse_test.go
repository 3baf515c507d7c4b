package integration

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// publishRaw bind-mounts the device node dev onto a new file below dir, as
// the kubelet publishes a raw block volume of any CSI driver, and returns
// the file. The bind is undone when the test ends.
func publishRaw(t *testing.T, dir, dev string) string {
	t.Helper()
	target := filepath.Join(dir, "kubelet", "plugins", "kubernetes.io", "csi", "volumeDevices", "publish",
		"pvc-of-another-driver-"+filepath.Base(dev), "pod-uid")
	return testutil.BindNode(t, dev, target)
}

// excludedByID indexes the inventory's excluded devices by disk ID.
func excludedByID(ex []inventory.Excluded) map[string]inventory.Excluded {
	out := map[string]inventory.Excluded{}
	for _, e := range ex {
		out[e.Disk.ID] = e
	}
	return out
}

func loopID(l testutil.Loop) string { return disk.MakeID("loop", l.Backing) }

// TestBoundDeviceIsExcluded: a blank disk whose device node is
// bind-mounted elsewhere (another driver's published raw block volume) is
// excluded by discovery, whether the bind was there first or appears on a
// disk the record already holds as free; once the bind is gone, the next
// discovery manages the disk again.
func TestBoundDeviceIsExcluded(t *testing.T) {
	var first string
	e := newEnv(t, []int64{32 << 20, 32 << 20, 32 << 20}, func(loops []testutil.Loop) {
		first = publishRaw(t, t.TempDir(), loops[0].Path)
	})
	rec, ex := e.inv.Snapshot()
	checkBound(t, rec, ex, e.loops[0], first)
	if d := rec.Disks[loopID(e.loops[1])]; d == nil || d.Status != state.Free {
		t.Fatalf("unbound disk %s: %+v", e.loops[1].Path, d)
	}

	// A disk the record holds as free gets bound by someone else.
	second := publishRaw(t, t.TempDir(), e.loops[1].Path)
	e.start()
	rec, ex = e.inv.Snapshot()
	checkBound(t, rec, ex, e.loops[0], first)
	checkBound(t, rec, ex, e.loops[1], second)
	if d := rec.Disks[loopID(e.loops[2])]; d == nil || d.Status != state.Free {
		t.Fatalf("unbound disk %s: %+v", e.loops[2].Path, d)
	}

	for _, p := range []string{first, second} {
		if err := unix.Unmount(p, 0); err != nil {
			t.Fatal(err)
		}
	}
	e.start()
	rec, ex = e.inv.Snapshot()
	if len(ex) != 0 {
		t.Errorf("excluded after the binds are gone: %+v", ex)
	}
	for _, l := range e.loops {
		if d := rec.Disks[loopID(l)]; d == nil || d.Status != state.Free {
			t.Errorf("disk %s after its bind is gone: %+v", l.Path, d)
		}
	}
}

// checkBound: the disk of l is excluded and not free in the record (absent,
// or kept there as excluded), its facts naming the bind and the reason
// saying it is in use.
func checkBound(t *testing.T, rec *state.Record, ex []inventory.Excluded, l testutil.Loop, bind string) {
	t.Helper()
	id := loopID(l)
	if d := rec.Disks[id]; d != nil && d.Status == state.Free {
		t.Errorf("bound disk %s is free in the record: %+v", l.Path, d)
	}
	x, ok := excludedByID(ex)[id]
	if !ok {
		t.Fatalf("bound disk %s is not excluded; excluded: %+v", l.Path, ex)
	}
	if !reflect.DeepEqual(x.Disk.Facts.DeviceNodeBinds, []string{bind}) || !x.Disk.Facts.Mounted {
		t.Errorf("facts of %s: %+v, want bound at %s", l.Path, x.Disk.Facts, bind)
	}
	// "mounted", or a reason that names the bind.
	if x.Reason != "mounted" && !strings.Contains(x.Reason, bind) {
		t.Errorf("reason for %s: %q", l.Path, x.Reason)
	}
}

// TestHeldDeviceIsExcluded: a blank disk under a device-mapper device is
// excluded as in use by its holder. It needs a kernel with device-mapper.
func TestHeldDeviceIsExcluded(t *testing.T) {
	var holder string
	e := newEnv(t, []int64{32 << 20, 32 << 20}, func(loops []testutil.Loop) {
		holder = testutil.DMLinear(t, loops[0].Path)
	})
	rec, ex := e.inv.Snapshot()
	x, ok := excludedByID(ex)[loopID(e.loops[0])]
	if d := rec.Disks[loopID(e.loops[0])]; !ok || d != nil && d.Status == state.Free {
		t.Fatalf("held disk %s not excluded: %+v", e.loops[0].Path, ex)
	}
	if !reflect.DeepEqual(x.Disk.Facts.Holders, []string{holder}) || !strings.Contains(x.Reason, holder) {
		t.Errorf("held disk: reason %q, facts %+v, want in use by %s", x.Reason, x.Disk.Facts, holder)
	}
	if d := rec.Disks[loopID(e.loops[1])]; d == nil || d.Status != state.Free {
		t.Errorf("the other disk: %+v", d)
	}
}
