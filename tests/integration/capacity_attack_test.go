package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// GetCapacity keeps each free disk's last blank probe while the device's
// counters show nothing new (pkg/inventory/verdict.go). These tests write
// to disks after a call has counted them, the ways other actors do.

// fsImage returns the first MiB of a fresh filesystem of fsType.
func fsImage(t *testing.T, dir, fsType string) []byte {
	t.Helper()
	img := filepath.Join(dir, fsType+".img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 300<<20); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs."+fsType, "-q", "-f", img)
	b, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	return b[:1<<20]
}

// writeBuffered writes b at the start of dev through the page cache, without
// a sync, and returns the open file: the data reaches the device when the
// last opener closes it.
func writeBuffered(t *testing.T, dev string, b []byte) *os.File {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		f.Close()
		t.Fatal(err)
	}
	return f
}

// TestCapacitySeesWritesAfterItCounted: GetCapacity has counted four blank
// disks; then one gets an ext4 by mkfs, one a partition table by sfdisk,
// and one the first MiB of an xfs written plainly (buffered, no sync, the
// file closed). The very next call counts only the untouched disk, and the
// three are excluded with what they carry, their bytes unchanged.
func TestCapacitySeesWritesAfterItCounted(t *testing.T) {
	const size = 64 << 20
	e := newEnv(t, []int64{size, size, size, size}, nil)
	xfs := fsImage(t, e.dir, "xfs")
	for i := 0; i < 2; i++ {
		if avail, _ := e.capacity(); avail != 4*size {
			t.Fatalf("GetCapacity %d; want %d", avail, 4*size)
		}
	}
	run(t, "mkfs.ext4", "-q", "-F", "-L", "planted", e.loops[0].Path)
	execIn(t, "label: gpt\n,8MiB\n", "sfdisk", "--quiet", "--wipe=never", e.loops[1].Path)
	if err := writeBuffered(t, e.loops[2].Path, xfs).Close(); err != nil {
		t.Fatal(err)
	}
	var sums [3][32]byte
	for i := range sums {
		sums[i] = deviceSum(t, e.loops[i].Path)
	}
	if avail, _ := e.capacity(); avail != size {
		t.Fatalf("GetCapacity %d right after three disks were written; want the untouched one, %d", avail, size)
	}
	for i, kind := range []string{"ext4", "gpt", "xfs"} {
		if d := e.diskRecord(loopID(e.loops[i])); d == nil || d.Status != state.Excluded || !strings.Contains(d.Reason, kind) {
			t.Fatalf("disk written with %s: %+v; want excluded with the reason", kind, d)
		}
		if deviceSum(t, e.loops[i].Path) != sums[i] {
			t.Fatalf("disk written with %s changed", kind)
		}
	}
}

// TestCapacitySeesOtherMediaBehindTheDevice: after GetCapacity counted a
// loop disk, its device is detached and attached again, at the same
// number, to a file of the same name that now holds an ext4: same device
// number, same identity, and nothing written through the device. The
// kernel's disk sequence number moved, so the next call checks the disk
// in full and excludes it.
func TestCapacitySeesOtherMediaBehindTheDevice(t *testing.T) {
	const size = 64 << 20
	e := newEnv(t, []int64{size, size}, nil)
	if avail, _ := e.capacity(); avail != 2*size {
		t.Fatalf("GetCapacity %d; want %d", avail, 2*size)
	}
	l := e.loops[0]
	num, err := strconv.Atoi(strings.TrimPrefix(l.Path, "/dev/loop"))
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(e.dir, "other.img")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(other, size); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs.ext4", "-q", "-F", "-L", "other", other)
	testutil.Detach(l.Path)
	if err := os.Rename(other, l.Backing); err != nil {
		t.Fatal(err)
	}
	if _, err := testutil.AttachAt(num, l.Backing); err != nil {
		t.Fatal(err)
	}
	if avail, _ := e.capacity(); avail != size {
		t.Fatalf("GetCapacity %d with an ext4 behind %s; want %d", avail, l.Path, size)
	}
	if d := e.diskRecord(loopID(l)); d == nil || d.Status != state.Excluded || !strings.Contains(d.Reason, "ext4") {
		t.Fatalf("disk with other media: %+v; want excluded", d)
	}
}

// TestCapacityFindsUnflushedWrites: a writer puts the first MiB of an
// xfs on a counted disk and keeps the device open without a sync, so the
// data may sit in the page cache where the device's counters do not show
// it. Once
// the disk's verdict is older than ProbeMaxAge a background probe finds
// the xfs: GetCapacity drops the disk within a bounded wait, the disk is
// excluded, and the writer's bytes are as written.
func TestCapacityFindsUnflushedWrites(t *testing.T) {
	const size = 64 << 20
	e := newEnv(t, []int64{size, size / 2}, nil)
	e.probeMaxAge = 200 * time.Millisecond
	e.start()
	xfs := fsImage(t, e.dir, "xfs")
	if avail, _ := e.capacity(); avail != size+size/2 {
		t.Fatalf("GetCapacity %d; want %d", avail, size+size/2)
	}
	f := writeBuffered(t, e.loops[0].Path, xfs)
	defer f.Close()
	sum := deviceSum(t, e.loops[0].Path)
	deadline := time.Now().Add(10 * time.Second)
	for {
		avail, _ := e.capacity()
		if avail == size/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GetCapacity still %d 10 s after an xfs was written to a free disk", avail)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d := e.diskRecord(loopID(e.loops[0])); d == nil || d.Status != state.Excluded || !strings.Contains(d.Reason, "xfs") {
		t.Fatalf("disk with unflushed xfs: %+v; want excluded", d)
	}
	if deviceSum(t, e.loops[0].Path) != sum {
		t.Fatal("the writer's bytes changed")
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err) // the writer still holds the device
	}
}

// TestCreateVolumeSeesUnflushedWrites: GetCapacity found two disks blank;
// a writer puts the first MiB of an xfs on the smaller one and keeps the
// device open without a sync, so the device's counters do not move and
// the disk's verdict still holds by them. CreateVolume, which would pick
// the smaller disk, probes it in full rather than trust the verdict, and
// excludes it: the bigger disk is given out, and the writer's bytes are as
// written.
func TestCreateVolumeSeesUnflushedWrites(t *testing.T) {
	const size = 64 << 20
	e := newEnv(t, []int64{size / 2, size}, nil)
	xfs := fsImage(t, e.dir, "xfs")
	if avail, _ := e.capacity(); avail != size+size/2 {
		t.Fatalf("GetCapacity %d; want %d", avail, size+size/2)
	}
	dev := e.loops[0].Path
	m := mounter.New()
	before, err := m.Counters(dev)
	if err != nil || before.Writes == "" || before.Media == "" {
		t.Fatalf("counters of %s: %+v, %v; the kernel must count its I/O for this test", dev, before, err)
	}
	f := writeBuffered(t, dev, xfs)
	defer f.Close()
	sum := deviceSum(t, dev)
	if after, err := m.Counters(dev); err != nil || after != before {
		t.Fatalf("the write reached the device's counters (%+v, then %+v, %v): this test is about data they do not show yet", before, after, err)
	}
	v, err := e.createSized("pvc-after-write", testutil.MountCap("ext4"), nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	if v.VolumeContext["disk"] == loopID(e.loops[0]) {
		t.Fatalf("disk %s with an unflushed xfs was handed out", dev)
	}
	if d := e.diskRecord(loopID(e.loops[0])); d == nil || d.Status != state.Excluded || !strings.Contains(d.Reason, "xfs") {
		t.Fatalf("disk with unflushed xfs: %+v; want excluded", d)
	}
	if deviceSum(t, dev) != sum {
		t.Fatal("the writer's bytes changed")
	}
}

// setIOStats writes /sys/block/<dev>/queue/iostats of one of the test's
// own loop devices and restores it at cleanup (before the detach).
func setIOStats(t *testing.T, dev, v string) {
	t.Helper()
	p := filepath.Join("/sys/block", filepath.Base(dev), "queue", "iostats")
	old, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("the kernel has no %s: %v", p, err)
	}
	if err := os.WriteFile(p, []byte(v), 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile(p, old, 0) })
}

// TestCapacitySeesWritesWithIOStatsOff: with the queue's I/O accounting
// off (queue/iostats=0, a common NVMe tuning) the device's counters never
// move, so no verdict is kept: a mkfs.ext4 on a counted disk is still seen
// at the very next call.
func TestCapacitySeesWritesWithIOStatsOff(t *testing.T) {
	const size = 64 << 20
	e := newEnv(t, []int64{size, size}, nil)
	setIOStats(t, e.loops[0].Path, "0")
	if avail, _ := e.capacity(); avail != 2*size {
		t.Fatalf("GetCapacity %d; want %d", avail, 2*size)
	}
	run(t, "mkfs.ext4", "-q", "-F", "-L", "planted", e.loops[0].Path)
	if avail, _ := e.capacity(); avail != size {
		t.Fatalf("GetCapacity %d right after mkfs.ext4 on a free disk with iostats off; want %d", avail, size)
	}
}

// TestInKernelPartitionIsNeverHandedOut: a partition added to the kernel
// alone (BLKPG through addpart: no table on the disk) holds an ext4 that
// a probe of the whole disk (blkid -p, wipefs) does not see. GetCapacity
// leaves the disk out and CreateVolume does not hand it out: a free disk
// with partitions is in use.
func TestInKernelPartitionIsNeverHandedOut(t *testing.T) {
	if _, err := exec.LookPath("addpart"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("addpart is missing; .ci/run installs it (Debian package util-linux)")
		}
		t.Skip("needs addpart (Debian package util-linux; CI installs it)")
	}
	const small, big = 32 << 20, 64 << 20
	e := newEnv(t, []int64{small, big}, nil)
	if avail, _ := e.capacity(); avail != small+big {
		t.Fatalf("GetCapacity %d", avail)
	}
	dev := e.loops[0].Path
	run(t, "addpart", dev, "1", "2048", "32768") // 1 MiB in, 16 MiB
	t.Cleanup(func() { _ = exec.Command("delpart", dev, "1").Run() })
	part := dev + "p1"
	for i := 0; ; i++ { // devtmpfs makes the node; wait for it, bounded
		if _, err := os.Stat(part); err == nil {
			break
		} else if i == 100 {
			t.Fatalf("no partition node %s 2 s after addpart: %v", part, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	run(t, "mkfs.ext4", "-q", "-F", "-L", "hidden", part)
	avail, _ := e.capacity()
	v, err := e.createSized("pvc-attack", testutil.BlockCap(), nil, 1)
	if err == nil && v.VolumeContext["disk"] == loopID(e.loops[0]) {
		t.Fatalf("disk %s with an ext4 in partition %s was handed out (GetCapacity said %d)", dev, part, avail)
	}
	if avail != big {
		t.Fatalf("GetCapacity %d counts %s, which has a partition with an ext4; want %d", avail, dev, big)
	}
}
