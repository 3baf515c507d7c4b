package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// rigBase is where loopRig looks for free loop device numbers: above the
// numbers losetup --find hands out and the run testutil.NewLoopRun uses.
const rigBase, rigEnd = 300, 460

// lockRun takes an exclusive lock on each of the n loop numbers from base
// on, so that test binaries running at the same time never share a rig's
// run, not even while its devices are detached to be moved. It returns nil
// when another process holds one of them.
func lockRun(base, n int) []*os.File {
	var locks []*os.File
	for i := 0; i < n; i++ {
		f, err := os.OpenFile(filepath.Join(os.TempDir(), fmt.Sprintf("ecs-localdisk-csi-loop%d.lock", base+i)), os.O_CREATE|os.O_RDWR, 0o600)
		if err == nil {
			if err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
				f.Close()
			}
		}
		if err != nil {
			unlockRun(locks)
			return nil
		}
		locks = append(locks, f)
	}
	return locks
}

// unlockRun releases the locks of lockRun.
func unlockRun(locks []*os.File) {
	for _, f := range locks {
		f.Close()
	}
}

// loopRig is a set of backing files attached to loop devices in a run of
// consecutive numbers that the test reserved. The driver's static source
// names every device of the run, so a backing file may move between them as
// disks are renamed across a reboot. Whatever happens in the test, every
// loop device backed by one of the rig's files is detached at cleanup, and
// no other device is.
type loopRig struct {
	t   *testing.T
	dir string
	// nums is the run of device numbers; the first len(disks) started
	// with the disks attached in order, the rest (spares) unattached.
	nums []int
	// disks are the backing files of the driver's disks.
	disks []string
	// files are all backing files the rig made, disks and others.
	files []string
}

func loopPath(num int) string { return fmt.Sprintf("/dev/loop%d", num) }

// newLoopRig makes one sparse backing file per size and attaches them at a
// run of len(sizes)+spare free loop numbers.
func newLoopRig(t *testing.T, dir string, sizes []int64, spare int) *loopRig {
	t.Helper()
	testutil.RequireRoot(t)
	r := &loopRig{t: t, dir: dir}
	var locks []*os.File
	t.Cleanup(func() {
		r.detachAll()
		unlockRun(locks)
	})
	for _, s := range sizes {
		r.disks = append(r.disks, r.newFile(s))
	}
	n := len(sizes) + spare
	for base := rigBase; base+n <= rigEnd; base += n {
		if locks = lockRun(base, n); locks == nil {
			continue
		}
		free := true
		for i := 0; i < n && free; i++ {
			free = r.backingOf(loopPath(base+i)) == ""
		}
		ok := free
		for i := 0; ok && i < len(r.disks); i++ {
			ok = r.tryAttach(base+i, r.disks[i], false) == nil
		}
		if ok {
			for i := 0; i < n; i++ {
				r.nums = append(r.nums, base+i)
			}
			t.Logf("loop rig: devices loop%d..loop%d", base, base+n-1)
			return r
		}
		for _, f := range r.disks {
			r.detach(f)
		}
		unlockRun(locks)
		locks = nil
	}
	t.Fatalf("no run of %d free loop devices between loop%d and loop%d", n, rigBase, rigEnd)
	return nil
}

// newFile makes a sparse backing file of size bytes; the rig detaches any
// device backed by it at cleanup.
func (r *loopRig) newFile(size int64) string {
	r.t.Helper()
	f, err := os.CreateTemp(r.dir, "rig-*.img")
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		r.t.Fatal(err)
	}
	abs, err := filepath.Abs(f.Name())
	if err != nil {
		r.t.Fatal(err)
	}
	r.files = append(r.files, abs)
	return abs
}

// paths names every device of the run, attached or not.
func (r *loopRig) paths() []string {
	var out []string
	for _, n := range r.nums {
		out = append(out, loopPath(n))
	}
	return out
}

// backingOf is the backing file of a loop device, "" when it is unattached.
func (r *loopRig) backingOf(dev string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)")
}

// where lists the loop devices backed by file now.
func (r *loopRig) where(file string) []string {
	names, _ := filepath.Glob("/sys/block/loop*")
	var out []string
	for _, n := range names {
		dev := "/dev/" + filepath.Base(n)
		if r.backingOf(dev) == file {
			out = append(out, dev)
		}
	}
	return out
}

// at is the one loop device backed by file; the test fails when there is
// not exactly one.
func (r *loopRig) at(file string) string {
	r.t.Helper()
	devs := r.where(file)
	if len(devs) != 1 {
		r.t.Fatalf("%s is attached at %v, want exactly one device", file, devs)
	}
	return devs[0]
}

// tryAttach attaches file at /dev/loop<num>, read-only when ro, creating the
// device node if needed. A read-write device also gets its kernel read-only
// flag cleared, which a previous user of the number may have left set.
func (r *loopRig) tryAttach(num int, file string, ro bool) error {
	path := loopPath(num)
	if _, err := os.Stat(path); os.IsNotExist(err) {
		if err := unix.Mknod(path, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(num)))); err != nil {
			return err
		}
	}
	args := []string{path, file}
	if ro {
		args = []string{"--read-only", path, file}
	}
	// A just-detached device runs down only when its last opener lets go,
	// and the driver under test may be probing it (its cleaner retries):
	// losetup then says busy for a moment.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out, err := exec.Command("losetup", args...).CombinedOutput()
		if err == nil {
			break
		}
		if !strings.Contains(string(out), "busy") || time.Now().After(deadline) {
			return fmt.Errorf("losetup %v: %v: %s", args, err, out)
		}
	}
	if !ro {
		if out, err := exec.Command("blockdev", "--setrw", path).CombinedOutput(); err != nil {
			r.detach(file)
			return fmt.Errorf("blockdev --setrw %s: %v: %s", path, err, out)
		}
	}
	return nil
}

// attach is tryAttach that fails the test on error.
func (r *loopRig) attach(num int, file string, ro bool) string {
	r.t.Helper()
	if err := r.tryAttach(num, file, ro); err != nil {
		r.t.Fatal(err)
	}
	return loopPath(num)
}

// detach detaches every device backed by file and waits until the kernel
// has let go of each.
func (r *loopRig) detach(file string) {
	for _, dev := range r.where(file) {
		testutil.Detach(dev)
		for deadline := time.Now().Add(10 * time.Second); r.backingOf(dev) == file && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if r.backingOf(dev) == file {
			r.t.Errorf("%s still attached to %s after detach", dev, file)
		}
	}
}

// detachAll detaches every device backed by one of the rig's files.
func (r *loopRig) detachAll() {
	for _, f := range r.files {
		r.detach(f)
	}
}

// numOf is the loop number of a device path.
func numOf(t testing.TB, dev string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscanf(dev, "/dev/loop%d", &n); err != nil {
		t.Fatalf("%s is not a loop device path: %v", dev, err)
	}
	return n
}

// shuffle detaches all the rig's disks and attaches them again at the
// numbers of a permutation of the run drawn from seed, such that every disk
// gets another device. It returns the old and new device of each disk.
func (r *loopRig) shuffle(seed uint64) (before, after map[string]string) {
	r.t.Helper()
	before, after = map[string]string{}, map[string]string{}
	for _, f := range r.disks {
		before[f] = r.at(f)
	}
	rng := mrand.New(mrand.NewPCG(seed, 0x5eed))
	var perm []int
	for deranged := false; !deranged; {
		perm = rng.Perm(len(r.nums))
		deranged = true
		for i, f := range r.disks {
			deranged = deranged && loopPath(r.nums[perm[i]]) != before[f]
		}
	}
	for _, f := range r.disks {
		r.detach(f)
	}
	for i, f := range r.disks {
		after[f] = r.attach(r.nums[perm[i]], f, false)
		r.t.Logf("seed %d: %s moved %s -> %s", seed, filepath.Base(f), before[f], after[f])
	}
	return before, after
}

// newRigEnv is an env whose disks are a loopRig's, found by a static source
// naming every device of the rig's run.
func newRigEnv(t *testing.T, sizes []int64, spare int) (*env, *loopRig) {
	t.Helper()
	testutil.RequireRoot(t)
	e := &env{t: t, dir: t.TempDir(), m: mounter.New()}
	r := newLoopRig(t, e.dir, sizes, spare)
	t.Cleanup(e.unmountAll)
	patterns := r.paths()
	e.newSource = func() disk.Source {
		src, err := disk.NewStatic(disk.StaticConfig{Patterns: patterns, Prober: e.m})
		if err != nil {
			t.Fatal(err)
		}
		return src
	}
	e.start()
	return e, r
}

// fingerprint is the SHA-256 of a device's first MiB, of its last MiB and
// of all of it.
type fingerprint struct{ head, tail, all string }

func fingerprintOf(t testing.TB, dev string) fingerprint {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil || size < 2<<20 {
		t.Fatalf("size of %s: %d %v", dev, size, err)
	}
	sum := func(off, n int64) string {
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, off, n)); err != nil {
			t.Fatalf("reading %s: %v", dev, err)
		}
		return hex.EncodeToString(h.Sum(nil))
	}
	return fingerprint{head: sum(0, 1<<20), tail: sum(size-(1<<20), 1<<20), all: sum(0, size)}
}

// mountsOfDevice lists the mountinfo lines of mounts whose source is the
// block device dev.
func mountsOfDevice(t testing.TB, dev string) []string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	return mountinfoLines(t, 2, fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
}

// renameVol is a volume of the rename tests and what it must hold.
type renameVol struct {
	name            string
	v               *csi.Volume
	vc              *csi.VolumeCapability
	file            string // backing file of its disk
	data            []byte
	staging, target string
}

func (rv *renameVol) block() bool { return rv.vc.GetBlock() != nil }

// write stores the volume's data: a file on a filesystem volume, bytes at
// 1 MiB on a block volume.
func (rv *renameVol) write(t *testing.T) {
	t.Helper()
	if rv.block() {
		if err := writeAt(rv.target, rv.data, 1<<20); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := os.WriteFile(filepath.Join(rv.target, "data"), rv.data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// check reads the volume's data back through its published target.
func (rv *renameVol) check(t *testing.T) {
	t.Helper()
	got := make([]byte, len(rv.data))
	var err error
	if rv.block() {
		var f *os.File
		if f, err = os.Open(rv.target); err == nil {
			_, err = f.ReadAt(got, 1<<20)
			f.Close()
		}
	} else {
		got, err = os.ReadFile(filepath.Join(rv.target, "data"))
	}
	if err != nil || !bytes.Equal(got, rv.data) {
		t.Fatalf("volume %s (%s) does not read its own data back: %v", rv.name, rv.v.VolumeId, err)
	}
}

// TestRenameShuffledDisks: the backing files of three volumes (ext4, xfs,
// raw block) and one free disk are re-attached at other loop numbers, from
// seeded permutations over a run that includes a spare number. After each
// shuffle every volume is staged and published from its own disk and reads
// its own data, the free disk stays free and blank, and capacity is
// unchanged; three rounds restart the driver first, one renames the disks
// under a running driver. One round must put a volume's disk at another
// volume's old device path. A delete after all the renames wipes the
// deleted volume's disk and no other.
func TestRenameShuffledDisks(t *testing.T) {
	const size = 512 << 20 // xfs needs 300 MiB; the files are sparse
	e, rig := newRigEnv(t, []int64{size, size, size, size}, 1)
	ctx := context.Background()
	var vols []*renameVol
	for i, vc := range []*csi.VolumeCapability{testutil.MountCap("ext4"), testutil.MountCap("xfs"), testutil.BlockCap()} {
		rv := &renameVol{name: fmt.Sprintf("pvc-rename-%d", i), vc: vc, data: make([]byte, 256<<10),
			staging: e.path(fmt.Sprintf("staging%d", i)), target: e.path(fmt.Sprintf("pod%d/vol", i))}
		rand.Read(rv.data)
		rv.v = e.create(rv.name, vc, nil)
		rv.file = rig.backingOf(e.device(rv.v))
		e.stage(rv.v, vc, rv.staging)
		e.publish(rv.v, vc, rv.staging, rv.target, false)
		rv.write(t)
		e.unpublish(rv.v, rv.target)
		e.unstage(rv.v, rv.staging)
		vols = append(vols, rv)
	}
	var freeFile string
	for _, f := range rig.disks {
		owned := false
		for _, rv := range vols {
			owned = owned || rv.file == f
		}
		if !owned {
			freeFile = f
		}
	}
	if freeFile == "" {
		t.Fatal("no disk left free")
	}
	// use stages, publishes and checks every volume, then undoes it.
	use := func() {
		t.Helper()
		for _, rv := range vols {
			e.stage(rv.v, rv.vc, rv.staging)
			if got := rig.backingOf(e.device(rv.v)); got != rv.file {
				t.Fatalf("volume %s staged from %s, want its own disk %s", rv.v.VolumeId, got, rv.file)
			}
			e.publish(rv.v, rv.vc, rv.staging, rv.target, false)
			rv.check(t)
			e.unpublish(rv.v, rv.target)
			e.unstage(rv.v, rv.staging)
		}
	}
	use()
	crossed := false
	for _, round := range []struct {
		seed    uint64
		restart bool
	}{{1, true}, {2, true}, {3, false}, {4, true}} {
		t.Logf("shuffle with seed %d, restart %v", round.seed, round.restart)
		if round.restart {
			e.inv.Stop()
		}
		before, after := rig.shuffle(round.seed)
		for _, a := range vols {
			for _, b := range vols {
				if a != b && after[b.file] == before[a.file] {
					t.Logf("seed %d: volume %s's old device %s now holds volume %s's disk", round.seed, a.name, before[a.file], b.name)
					crossed = true
				}
			}
		}
		if round.restart {
			e.start()
		}
		use()
		if n := e.inv.ManagedDisks(); n != 4 {
			t.Fatalf("seed %d: %d managed disks, want 4", round.seed, n)
		}
		c, err := e.drv.GetCapacity(ctx, &csi.GetCapacityRequest{})
		if err != nil || c.AvailableCapacity != size {
			t.Fatalf("seed %d: capacity %v %v, want the one free disk", round.seed, c, err)
		}
		if p, err := e.m.Probe(ctx, rig.at(freeFile)); err != nil || len(p.Signatures) != 0 {
			t.Fatalf("seed %d: the free disk was touched: %v %v", round.seed, p.Signatures, err)
		}
	}
	if !crossed {
		t.Fatal("no shuffle put a volume's disk at another volume's old device path")
	}
	// Deleting the ext4 volume wipes its own disk, wherever it is now.
	gone := vols[0]
	e.delete(gone.v)
	if p, err := e.m.Probe(ctx, rig.at(gone.file)); err != nil || len(p.Signatures) != 0 {
		t.Fatalf("deleted volume's disk not clean: %v %v", p.Signatures, err)
	}
	vols = vols[1:]
	use()
}

// stageErr runs NodeStageVolume and returns its error.
func (e *env) stageErr(v *csi.Volume, vc *csi.VolumeCapability, staging string) error {
	_, err := e.drv.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: vc, VolumeContext: v.VolumeContext})
	return err
}

// publishErr runs NodePublishVolume and returns its error.
func (e *env) publishErr(v *csi.Volume, vc *csi.VolumeCapability, staging, target string) error {
	_, err := e.drv.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: v.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc, VolumeContext: v.VolumeContext})
	return err
}

// TestSwapDiskAtSamePath: volume V's disk is replaced by another disk at the
// same device path, first a blank one, then one with a foreign filesystem,
// while V's own disk is not attached anywhere. NodeStage and NodePublish of
// V fail with FAILED_PRECONDITION naming both identities; nothing is
// formatted, written or mounted. With nothing at the old path, and after a
// restart with the foreign disk there, NodeStage fails with NOT_FOUND saying
// the disk is not present, and V's allocation is kept. No other device
// changes at any point. When V's disk comes back at another device, V stages
// with its data.
func TestSwapDiskAtSamePath(t *testing.T) {
	const size = 64 << 20
	e, rig := newRigEnv(t, []int64{size, size, size}, 1)
	ctx := context.Background()
	vc, bc := testutil.MountCap("ext4"), testutil.BlockCap()
	v := e.create("pvc-v", vc, nil)
	w := e.create("pvc-w", bc, nil)
	staging, target := e.path("staging"), e.path("pod/v")
	e.stage(v, vc, staging)
	e.publish(v, vc, staging, target, false)
	data := []byte("volume V's own data")
	if err := os.WriteFile(filepath.Join(target, "data"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	e.unpublish(v, target)
	e.unstage(v, staging)
	if err := writeAt(e.device(w), []byte("volume W's data"), 4096); err != nil {
		t.Fatal(err)
	}
	oldPath := e.device(v)
	vFile := rig.backingOf(oldPath)
	wFile := rig.backingOf(e.device(w))
	var freeFile string
	for _, f := range rig.disks {
		if f != vFile && f != wFile {
			freeFile = f
		}
	}
	blank := rig.newFile(size)
	foreign := rig.newFile(size)
	run(t, "mkfs.ext4", "-q", "-F", "-L", "foreign", foreign)
	foreignUUID := run(t, "blkid", "-p", "-o", "value", "-s", "UUID", foreign)
	others := map[string]fingerprint{}
	for _, f := range []string{wFile, freeFile} {
		others[f] = fingerprintOf(t, rig.at(f))
	}
	othersUnchanged := func(when string) {
		t.Helper()
		for f, fp := range others {
			if got := fingerprintOf(t, rig.at(f)); got != fp {
				t.Fatalf("%s: %s changed", when, f)
			}
		}
	}
	// replace puts file at V's old device path, V's disk attached nowhere.
	replace := func(file string) fingerprint {
		t.Helper()
		for _, f := range []string{vFile, blank, foreign} {
			rig.detach(f)
		}
		if file != "" {
			rig.attach(numOf(t, oldPath), file, false)
		}
		if devs := rig.where(vFile); len(devs) != 0 {
			t.Fatalf("V's disk is still attached at %v", devs)
		}
		if file == "" {
			return fingerprint{}
		}
		return fingerprintOf(t, oldPath)
	}
	// refused checks that NodeStage and NodePublish of V fail with code
	// and every text in wants, and that nothing was mounted or changed.
	refused := func(when string, code codes.Code, fp fingerprint, wants ...string) {
		t.Helper()
		// The answer must not change when the CO retries.
		for i, err := range []error{
			e.stageErr(v, vc, staging), e.stageErr(v, vc, staging), e.publishErr(v, vc, staging, target),
		} {
			name := []string{"NodeStageVolume", "NodeStageVolume again", "NodePublishVolume"}[i]
			if status.Code(err) != code {
				t.Fatalf("%s: %s: %v, want %s", when, name, err, code)
			}
			for _, want := range wants {
				if !strings.Contains(status.Convert(err).Message(), want) {
					t.Fatalf("%s: %s error %q does not name %q", when, name, err, want)
				}
			}
			t.Logf("%s: %s: %v", when, name, err)
		}
		if m := e.mountAt(staging); m != "" {
			t.Fatalf("%s: staging mounted: %s", when, m)
		}
		if m := e.mountAt(target); m != "" {
			t.Fatalf("%s: target mounted: %s", when, m)
		}
		if fp != (fingerprint{}) {
			if got := fingerprintOf(t, oldPath); got != fp {
				t.Fatalf("%s: the device now at %s was written: %+v, was %+v", when, oldPath, got, fp)
			}
			if m := mountsOfDevice(t, oldPath); len(m) != 0 {
				t.Fatalf("%s: %s is mounted: %v", when, oldPath, m)
			}
		}
		othersUnchanged(when)
	}

	fp := replace(blank)
	refused("blank disk at V's path", codes.FailedPrecondition, fp, "loop:"+vFile, "loop:"+blank)
	if p, err := e.m.Probe(ctx, oldPath); err != nil || len(p.Signatures) != 0 {
		t.Fatalf("blank replacement gained signatures: %v %v", p.Signatures, err)
	}

	fp = replace(foreign)
	refused("foreign disk at V's path", codes.FailedPrecondition, fp, "loop:"+vFile, "loop:"+foreign)

	replace("")
	refused("nothing at V's path", codes.NotFound, fingerprint{}, "not present", "loop:"+vFile)

	fp = replace(foreign)
	e.start()
	refused("foreign disk at V's path after restart", codes.NotFound, fp, "not present", "loop:"+vFile)
	rec, excluded := e.inv.Snapshot()
	if d := rec.Disks[v.VolumeContext["disk"]]; d == nil || d.Status != state.Allocated || d.Volume == nil || d.Volume.ID != v.VolumeId {
		t.Fatalf("V's allocation lost while its disk is missing: %+v", d)
	}
	foreignExcluded := false
	for _, x := range excluded {
		foreignExcluded = foreignExcluded || (x.Disk.Path == oldPath && strings.Contains(x.Reason, "ext4"))
	}
	if !foreignExcluded {
		t.Fatalf("the foreign disk at %s is not excluded: %+v", oldPath, excluded)
	}
	if got := run(t, "blkid", "-p", "-o", "value", "-s", "UUID", oldPath); got != foreignUUID {
		t.Fatalf("foreign filesystem UUID changed: %s -> %s", foreignUUID, got)
	}

	// V's disk comes back at the spare device: V is found there, data intact.
	spare := rig.attach(rig.nums[len(rig.nums)-1], vFile, false)
	e.stage(v, vc, staging)
	if got := e.device(v); got != spare {
		t.Fatalf("V staged from %s, want %s", got, spare)
	}
	e.publish(v, vc, staging, target, false)
	if got, err := os.ReadFile(filepath.Join(target, "data")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("V's data after its disk came back: %q %v", got, err)
	}
	e.unpublish(v, target)
	e.unstage(v, staging)
	if got := fingerprintOf(t, oldPath); got != fp {
		t.Fatal("the foreign disk changed")
	}
	othersUnchanged("after V came back")
}
