package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
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

// The tests in this file attack the driver's promises from outside its
// assumptions: another actor writes to a disk the record calls free or
// allocated, mounts something where a volume would be, or hands the driver
// IDs and paths that belong to something else. Each works on real loop
// devices and real mounts.

// deviceSum is the SHA-256 of the whole device.
func deviceSum(t *testing.T, dev string) [32]byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// plant writes what another actor would onto dev: "ext4" a filesystem,
// "gpt" a partition table. It returns the device's checksum afterwards.
func plant(t *testing.T, dev, kind string) [32]byte {
	t.Helper()
	switch kind {
	case "ext4":
		run(t, "mkfs.ext4", "-q", "-F", "-L", "planted", dev)
	case "gpt":
		execIn(t, "label: gpt\n,8MiB\n", "sfdisk", "--quiet", "--wipe=never", dev)
	}
	run(t, "blockdev", "--flushbufs", dev)
	return deviceSum(t, dev)
}

// execIn runs a command with stdin.
func execIn(t *testing.T, stdin, name string, args ...string) {
	t.Helper()
	c := exec.Command(name, args...)
	c.Stdin = strings.NewReader(stdin)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func wantStatus(t *testing.T, err error, code codes.Code, words ...string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v; want %s", err, code)
	}
	for _, w := range words {
		if !strings.Contains(status.Convert(err).Message(), w) {
			t.Fatalf("message %q does not mention %q", status.Convert(err).Message(), w)
		}
	}
}

// TestPlantedDataOnFreeDiskIsNeverHandedOut: after start-up, an operator
// formats one free disk by hand and another tool writes a partition table
// onto a second. Neither counts in GetCapacity, CreateVolume gives out
// neither (the last free disk goes, then RESOURCE_EXHAUSTED), both are
// recorded as excluded with the reason, and their bytes are unchanged.
func TestPlantedDataOnFreeDiskIsNeverHandedOut(t *testing.T) {
	e := newEnv(t, []int64{64 << 20, 64 << 20, 64 << 20}, nil)
	sumFS := plant(t, e.loops[0].Path, "ext4")
	sumPT := plant(t, e.loops[1].Path, "gpt")
	if avail, _ := e.capacity(); avail != 64<<20 {
		t.Fatalf("GetCapacity %d after two disks were taken by others; want the one blank disk, %d", avail, 64<<20)
	}
	v := e.create("pvc-a", testutil.MountCap("ext4"), nil)
	if v.VolumeContext["disk"] != loopID(e.loops[2]) {
		t.Fatalf("volume on %s; want the blank disk %s", v.VolumeContext["disk"], loopID(e.loops[2]))
	}
	_, err := e.createSized("pvc-b", testutil.MountCap("ext4"), nil, 0)
	wantStatus(t, err, codes.ResourceExhausted)
	for i, kind := range []string{"ext4", "gpt"} {
		d := e.diskRecord(loopID(e.loops[i]))
		if d == nil || d.Status != state.Excluded || !strings.Contains(d.Reason, kind) {
			t.Fatalf("disk with a planted %s: %+v; want excluded with the reason", kind, d)
		}
	}
	if deviceSum(t, e.loops[0].Path) != sumFS || deviceSum(t, e.loops[1].Path) != sumPT {
		t.Fatal("planted data changed")
	}
	// Excluded stays excluded across a restart, and a disk the operator
	// clears again is free again.
	run(t, "wipefs", "--all", "--quiet", e.loops[1].Path)
	e.start()
	if d := e.diskRecord(loopID(e.loops[0])); d.Status != state.Excluded {
		t.Fatalf("after restart: %+v", d)
	}
	if d := e.diskRecord(loopID(e.loops[1])); d.Status != state.Free {
		t.Fatalf("cleared disk after restart: %+v; want free", d)
	}
}

// TestPlantedDataOnAllocatedDiskIsNeverWiped: a disk is allocated; before
// it is staged, someone formats it by hand. NodeStage refuses it, and when
// the claim is deleted the cleaner does not wipe it (the filesystem is not
// the one the driver derives from the volume ID): the disk is excluded with
// the reason, and every byte is as the other actor left it. The same for a
// block volume: NodeStage and NodePublish refuse to hand the disk out raw.
func TestPlantedDataOnAllocatedDiskIsNeverWiped(t *testing.T) {
	for _, c := range []struct {
		name string
		vc   *csi.VolumeCapability
	}{{"filesystem", testutil.MountCap("ext4")}, {"block", testutil.BlockCap()}} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, []int64{64 << 20}, nil)
			ctx := context.Background()
			v := e.create("pvc", c.vc, map[string]string{"cleanupPolicy": "zero"})
			dev := e.device(v)
			sum := plant(t, dev, "ext4")
			staging, target := e.path("staging"), e.path("pod/target")
			_, err := e.drv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: c.vc})
			wantStatus(t, err, codes.FailedPrecondition, "ext4")
			_, err = e.drv.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: c.vc})
			wantStatus(t, err, codes.FailedPrecondition)
			if m := e.mountAt(target); m != "" {
				t.Fatalf("published anyway: %s", m)
			}
			if _, err := e.drv.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
				t.Fatal(err)
			}
			d := e.waitStatus(v.VolumeContext["disk"], state.Excluded)
			if !strings.Contains(d.Reason, "ext4") || d.Volume != nil {
				t.Fatalf("excluded disk: %+v", d)
			}
			if deviceSum(t, dev) != sum {
				t.Fatal("the cleaner erased data the driver did not put there")
			}
			if avail, _ := e.capacity(); avail != 0 {
				t.Fatalf("GetCapacity %d with the only disk excluded", avail)
			}
		})
	}
}

// TestCleanerWipesOnlyItsOwn: the cleaner still wipes what is the deleted
// volume's own: its filesystem, and whatever a pod wrote to a raw volume
// (here a filesystem made inside it).
func TestCleanerWipesOnlyItsOwn(t *testing.T) {
	e := newEnv(t, []int64{64 << 20, 64 << 20}, nil)
	fs, _ := e.filledVolume("fs", "signatures", 0)
	e.delete(fs)
	bc := testutil.BlockCap()
	raw := e.create("raw", bc, nil)
	staging, target := e.path("staging-raw"), e.path("pod-raw/dev")
	e.stage(raw, bc, staging)
	e.publish(raw, bc, staging, target, false)
	run(t, "mkfs.ext4", "-q", "-F", target) // what a pod may do with its raw volume
	e.unpublish(raw, target)
	e.unstage(raw, staging)
	e.delete(raw)
}

// TestHostileIDsNeverUnmountLiveVolumes: with a real volume staged and
// published, NodeUnpublish and NodeUnstage are sent with IDs that are not
// that volume's (another node's, a forged nonce, the ID in upper case, the
// ID of a deleted volume that lived on the same disk) at its paths, and with
// the real ID at paths holding something else (an admin's tmpfs, another
// volume's staging mount). Unknown IDs get NOT_FOUND, foreign mounts
// FAILED_PRECONDITION; every mount stays and the data reads back.
func TestHostileIDsNeverUnmountLiveVolumes(t *testing.T) {
	e := newEnv(t, []int64{64 << 20, 64 << 20}, nil)
	ctx := context.Background()
	vc := testutil.MountCap("ext4")
	old := e.create("old", vc, nil)
	e.delete(old) // its disk is free again, and may hold the next volume
	a := e.create("a", vc, nil)
	b := e.create("b", vc, nil)
	stA, tgA, stB := e.path("st-a"), e.path("pod-a/vol"), e.path("st-b")
	e.stage(a, vc, stA)
	e.publish(a, vc, stA, tgA, false)
	e.stage(b, vc, stB)
	if err := os.WriteFile(filepath.Join(tgA, "data"), []byte("a's data"), 0o600); err != nil {
		t.Fatal(err)
	}
	admin := e.path("admin-tmpfs")
	if err := os.MkdirAll(admin, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", admin)
	t.Cleanup(func() { _ = e.m.Unmount(admin) })

	upper := a.VolumeId[:len(a.VolumeId)-12] + strings.ToUpper(a.VolumeId[len(a.VolumeId)-12:])
	if upper == a.VolumeId {
		upper = a.VolumeId[:len(a.VolumeId)-1] + "Z"
	}
	otherNode := strings.Replace(a.VolumeId, ":"+node+":", ":other-node:", 1)
	forged := a.VolumeId[:len(a.VolumeId)-12] + "0123456789ab"
	for _, id := range []string{otherNode, forged, upper, old.VolumeId} {
		for _, p := range []string{tgA, stA, stB, admin} {
			_, err := e.drv.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: p})
			wantStatus(t, err, codes.NotFound)
			_, err = e.drv.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: p})
			wantStatus(t, err, codes.NotFound)
		}
	}
	for _, p := range []string{admin, stB} {
		_, err := e.drv.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: a.VolumeId, TargetPath: p})
		wantStatus(t, err, codes.FailedPrecondition, "left mounted")
		_, err = e.drv.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: a.VolumeId, StagingTargetPath: p})
		wantStatus(t, err, codes.FailedPrecondition, "left mounted")
	}
	// Staging or publishing onto the admin's tmpfs or another volume's
	// mount is refused the same way, and mounts nothing over it.
	_, err := e.drv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: b.VolumeId, StagingTargetPath: admin, VolumeCapability: vc})
	wantStatus(t, err, codes.FailedPrecondition, "not of this volume")
	_, err = e.drv.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: b.VolumeId, StagingTargetPath: stB, TargetPath: tgA, VolumeCapability: vc})
	wantStatus(t, err, codes.FailedPrecondition, "not of this volume")
	for _, p := range []string{tgA, stA, stB, admin} {
		if e.mountAt(p) == "" {
			t.Fatalf("%s was unmounted", p)
		}
		if n := len(mountinfoLines(t, 4, p)); n != 1 {
			t.Fatalf("%s has %d mounts; want the one it had", p, n)
		}
	}
	if b, err := os.ReadFile(filepath.Join(tgA, "data")); err != nil || string(b) != "a's data" {
		t.Fatalf("data of a: %q %v", b, err)
	}
	// A path with nothing mounted: OK whatever the ID.
	if _, err := e.drv.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: forged, TargetPath: e.path("nothing")}); err != nil {
		t.Fatalf("unpublish of an unknown ID where nothing is mounted: %v", err)
	}
	// The real calls still work.
	e.unpublish(a, tgA)
	e.unstage(a, stA)
	e.unstage(b, stB)
}

// TestFormattedVolumeIsNeverFormattedAgain: a volume's filesystem is made
// and unstaged, then someone runs wipefs -a on the disk (as the README once
// suggested for excluded disks). NodeStage does not format it again: it
// answers FAILED_PRECONDITION saying that the data is gone, the disk stays
// blank, and the volume's condition is abnormal.
func TestFormattedVolumeIsNeverFormattedAgain(t *testing.T) {
	e := newEnv(t, []int64{64 << 20}, nil)
	ctx := context.Background()
	vc := testutil.MountCap("ext4")
	v := e.create("pvc", vc, nil)
	staging := e.path("staging")
	e.stage(v, vc, staging)
	e.unstage(v, staging)
	dev := e.device(v)
	run(t, "wipefs", "--all", "--quiet", dev)
	sum := deviceSum(t, dev)
	for i := 0; i < 2; i++ { // the kubelet retries
		_, err := e.drv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: vc})
		wantStatus(t, err, codes.FailedPrecondition, "never formats it again")
	}
	if deviceSum(t, dev) != sum || e.mountAt(staging) != "" {
		t.Fatal("the volume's disk was formatted again or mounted")
	}
	st, err := e.drv.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: staging})
	if err != nil || !st.GetVolumeCondition().GetAbnormal() || !strings.Contains(st.GetVolumeCondition().GetMessage(), "no filesystem") {
		t.Fatalf("volume condition %v, %v; want abnormal", st.GetVolumeCondition(), err)
	}
}

// TestReadOnlyBlockRetryReassertsFlag: a read-only raw block publication
// whose device lost its kernel read-only flag (the driver died between the
// bind and the flag, or setting it failed) is made read-only again by the
// kubelet's retry: no write reaches the device through the publication.
func TestReadOnlyBlockRetryReassertsFlag(t *testing.T) {
	e := newEnv(t, []int64{64 << 20}, nil)
	bc := testutil.BlockCap()
	v := e.create("raw", bc, nil)
	staging, target := e.path("staging"), e.path("pod/dev")
	e.stage(v, bc, staging)
	e.publish(v, bc, staging, target, true)
	dev := e.device(v)
	if ro := strings.TrimSpace(run(t, "blockdev", "--getro", dev)); ro != "1" {
		t.Fatalf("read-only publication: device ro flag %s", ro)
	}
	run(t, "blockdev", "--setrw", dev) // as a crash right after the bind leaves it
	e.publish(v, bc, staging, target, true)
	if ro := strings.TrimSpace(run(t, "blockdev", "--getro", dev)); ro != "1" {
		t.Fatalf("after the retry the device is writable (ro flag %s)", ro)
	}
	if err := writeAt(target, []byte("x"), 0); err == nil {
		t.Fatal("a write through the read-only publication succeeded")
	}
	e.unpublish(v, target)
	if ro := strings.TrimSpace(run(t, "blockdev", "--getro", dev)); ro != "0" {
		t.Fatalf("after unpublish: ro flag %s", ro)
	}
}

// leaveRawData creates a raw block volume, has its "pod" write data at off
// through the publication, and deletes the volume with the default
// (signatures) cleanup, so that the disk is free and holds data.
func (e *env) leaveRawData(name string, data []byte, off int64) *csi.Volume {
	e.t.Helper()
	bc := testutil.BlockCap()
	v := e.create(name, bc, nil)
	staging, target := e.path(name+"-staging"), e.path(name+"-pod/dev")
	e.stage(v, bc, staging)
	e.publish(v, bc, staging, target, false)
	if err := writeAt(target, data, off); err != nil {
		e.t.Fatal(err)
	}
	e.unpublish(v, target)
	e.unstage(v, staging)
	e.delete(v)
	return v
}

// TestRawBlockNeverReadsPreviousTenant: a raw block volume's pod writes a
// pattern; the volume is deleted with the default (signatures) cleanup; the
// next raw block volume on that disk reads zeroes where the pattern was. A
// filesystem volume may take such a disk without zeroing.
func TestRawBlockNeverReadsPreviousTenant(t *testing.T) {
	e := newEnv(t, []int64{64 << 20}, nil)
	bc := testutil.BlockCap()
	pattern := bytes.Repeat([]byte("previous tenant "), 4096)
	first := e.leaveRawData("first", pattern, 32<<20)
	staging, target := e.path("staging"), e.path("pod/dev")
	residual := e.diskRecord(first.VolumeContext["disk"]).Residual
	second := e.create("second", bc, nil)
	e.stage(second, bc, staging)
	e.publish(second, bc, staging, target, false)
	checkNoPreviousTenant(t, target, len(pattern))
	if !residual {
		t.Fatal("the disk was not recorded residual after a signatures cleanup of a written volume")
	}
	if d := e.diskRecord(second.VolumeContext["disk"]); d.Residual || !d.Volume.RawExposed {
		t.Fatalf("disk after zeroing: %+v", d)
	}
}

// TestPublishRefusesNonEmptyDirectory: a target directory that already holds
// files is refused (a mount would hide them); the files stay visible, and a
// later unpublish of that path converges (OK, the files kept).
func TestPublishRefusesNonEmptyDirectory(t *testing.T) {
	e := newEnv(t, []int64{64 << 20}, nil)
	ctx := context.Background()
	vc := testutil.MountCap("ext4")
	v := e.create("pvc", vc, nil)
	staging, target := e.path("staging"), e.path("pod/vol")
	e.stage(v, vc, staging)
	if err := os.MkdirAll(target, 0o750); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(target, "keep")
	if err := os.WriteFile(keep, []byte("someone's"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := e.drv.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc})
	wantStatus(t, err, codes.FailedPrecondition, "not empty")
	if e.mountAt(target) != "" {
		t.Fatal("published over a directory with files")
	}
	for i := 0; i < 2; i++ {
		if _, err := e.drv.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.VolumeId, TargetPath: target}); err != nil {
			t.Fatalf("unpublish of a directory with files: %v", err)
		}
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "someone's" {
		t.Fatalf("file in the target: %q %v", b, err)
	}
}

// TestDeleteFailsWhenReleaseNotRecorded: with both copies of the state lost,
// DeleteVolume of a volume recovered from its disk must record the release;
// while the state cannot be saved it answers an error (the CO retries)
// instead of OK, which would delete the PV and leave the disk out of service
// for good. Once the state can be saved again, the retry frees the disk.
func TestDeleteFailsWhenReleaseNotRecorded(t *testing.T) {
	e := newEnv(t, []int64{64 << 20}, nil)
	vc := testutil.MountCap("ext4")
	v := e.create("pvc", vc, nil)
	staging := e.path("staging")
	e.stage(v, vc, staging)
	e.unstage(v, staging)
	dir := e.path("state")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	e.start()
	// The state directory becomes a file: no save can succeed (root
	// ignores permissions, not this).
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := e.drv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.VolumeId})
	if err == nil {
		t.Fatal("DeleteVolume answered OK though the release could not be recorded")
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	e.delete(v)
}

// TestConcurrentChecksNeverExcludeBlankDisks: the checks before allocation
// and capacity open each disk exclusively; many GetCapacity and CreateVolume
// calls at once must never take one another's open for another user and
// exclude a blank disk.
func TestConcurrentChecksNeverExcludeBlankDisks(t *testing.T) {
	e := newEnv(t, []int64{32 << 20, 32 << 20, 32 << 20, 32 << 20}, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 5; j++ {
				if _, err := e.drv.GetCapacity(ctx, &csi.GetCapacityRequest{}); err != nil {
					errs <- err
				}
			}
		}()
	}
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.createSized(fmt.Sprintf("pvc-%d", i), testutil.MountCap("ext4"), nil, 0); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("call failed: %v", err)
	}
	rec, _ := e.inv.Snapshot()
	for id, d := range rec.Disks {
		if d.Status != state.Allocated {
			t.Errorf("disk %s is %s (%s); want every blank disk allocated", id, d.Status, d.Reason)
		}
	}
}

// TestResidualSurvivesAbsentDisk: a disk that may hold a raw volume's bytes
// is absent while the driver restarts (slow udev, an NVMe reset); when it
// is back, it is still known to be residual, and the next raw volume on it
// reads zeroes, not the previous tenant's bytes.
func TestResidualSurvivesAbsentDisk(t *testing.T) {
	e := newEnv(t, []int64{64 << 20}, nil)
	bc := testutil.BlockCap()
	pattern := bytes.Repeat([]byte("previous tenant "), 4096)
	first := e.leaveRawData("first", pattern, 32<<20)
	staging, target := e.path("staging"), e.path("pod/dev")
	diskID := first.VolumeContext["disk"]

	// Restart with the disk detached, then with it back.
	backing := e.loops[0].Backing
	testutil.Detach(e.loops[0].Path)
	other := testutil.NewLoop(t, e.dir, 64<<20)
	e.newSource = e.staticSource(other.Path)
	e.start()
	back, err := testutil.Attach(backing)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testutil.DetachIfBacking(back) })
	e.loops[0] = back
	e.newSource = e.staticSource(back.Path)
	e.start()
	if d := e.diskRecord(diskID); d == nil || !d.Residual {
		t.Fatalf("disk back after an absence: %+v; want it still residual", d)
	}
	second := e.create("second", bc, nil)
	if second.VolumeContext["disk"] != diskID {
		t.Fatalf("second volume on %s, want %s", second.VolumeContext["disk"], diskID)
	}
	e.stage(second, bc, staging)
	e.publish(second, bc, staging, target, false)
	checkNoPreviousTenant(t, target, len(pattern))
	e.unpublish(second, target)
	e.unstage(second, staging)
}

// staticSource returns a source builder over exactly these device paths.
func (e *env) staticSource(paths ...string) func() disk.Source {
	return func() disk.Source {
		s, err := disk.NewStatic(disk.StaticConfig{Patterns: paths, Prober: e.m})
		if err != nil {
			e.t.Fatal(err)
		}
		return s
	}
}

// cutShortFormat is a mounter whose mkfs is cut short before it writes
// anything (a kubelet deadline, an OOM kill).
type cutShortFormat struct{ *mounter.Real }

func (cutShortFormat) Format(context.Context, string, string, string, int64, []string) error {
	return context.DeadlineExceeded
}

// TestRawDataNeverTakenForPartialFormat: a filesystem volume's mkfs is cut
// short (recorded as started); the same volume is then asked for as a raw
// block device. It is not handed out raw (it has a format of the driver's
// in progress); and were a pod's data on it, a later filesystem stage would
// not take that for a partial mkfs of the driver's and wipe it.
func TestRawDataNeverTakenForPartialFormat(t *testing.T) {
	e := newEnv(t, []int64{64 << 20}, nil)
	ctx := context.Background()
	mc, bc := testutil.MountCap("ext4"), testutil.BlockCap()
	v := e.create("pvc", mc, nil)
	staging, target := e.path("staging"), e.path("pod/dev")
	e.useMounter(cutShortFormat{e.m})
	if _, err := e.drv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: mc}); err == nil {
		t.Fatal("stage with mkfs cut short succeeded")
	}
	e.useMounter(nil)
	if d := e.diskRecord(v.VolumeContext["disk"]); d.Volume.Format != state.FormatStarted {
		t.Fatalf("format after a cut-short mkfs: %q", d.Volume.Format)
	}
	_, err := e.drv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: e.path("bstaging"), VolumeCapability: bc})
	wantStatus(t, err, codes.FailedPrecondition, "not handed out raw")
	_, err = e.drv.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: e.path("bstaging"), TargetPath: target, VolumeCapability: bc})
	wantStatus(t, err, codes.FailedPrecondition, "not handed out raw")
	// Someone else's data lands on the disk after the cut-short mkfs: the
	// retried filesystem stage refuses it instead of wiping it.
	dev := e.device(v)
	sum := plant(t, dev, "ext4")
	_, err = e.drv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.VolumeId, StagingTargetPath: staging, VolumeCapability: mc})
	wantStatus(t, err, codes.FailedPrecondition, "cut short")
	if deviceSum(t, dev) != sum {
		t.Fatal("data on the disk of a cut-short mkfs was wiped")
	}
	// Cleared again, the retry makes the filesystem.
	run(t, "wipefs", "--all", "--quiet", dev)
	e.stage(v, mc, staging)
	e.unstage(v, staging)
}

// TestZeroingOutlivesCallDeadlines: a raw volume on a disk that may hold an
// earlier volume's bytes is zeroed before it is handed out. The kubelet
// gives each NodeStage a deadline; a zeroing longer than that must go on
// across the retries (each answers ABORTED while it runs) instead of
// starting over at byte 0 each time, and end with the disk handed out
// zeroed. The zeroing is capped at 256 MiB/s (--cleanup-max-rate), so the
// 1 GiB takes about 4 s: a loop device zeroes by itself much faster.
func TestZeroingOutlivesCallDeadlines(t *testing.T) {
	e := newEnv(t, []int64{1 << 30}, nil)
	bc := testutil.BlockCap()
	tail := []byte("TAIL OF THE PREVIOUS TENANT")
	e.leaveRawData("first", tail, (1<<30)-4096)
	e.cleanupRate = 256 << 20
	e.start()
	staging, target := e.path("staging"), e.path("pod/dev")
	second := e.create("second", bc, nil)
	aborted := 0
	for try := 0; ; try++ {
		if try == 600 {
			t.Fatal("the disk was not handed out after 600 tries of 300 ms")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, err := e.drv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: second.VolumeId, StagingTargetPath: staging, VolumeCapability: bc})
		cancel()
		if err == nil {
			break
		}
		wantStatus(t, err, codes.Aborted, "zeroing")
		aborted++
	}
	if aborted == 0 {
		t.Fatal("the zeroing of 1 GiB finished within one 300 ms call; the test proves nothing")
	}
	t.Logf("handed out after %d ABORTED answers", aborted)
	e.publish(second, bc, staging, target, false)
	got := make([]byte, len(tail))
	f, err := os.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(got, (1<<30)-4096)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, len(tail))) {
		t.Fatalf("the second raw volume reads %q at the end of the disk", got)
	}
	e.unpublish(second, target)
	e.unstage(second, staging)
}

// TestUnmountsWhenTheDiskIsGone: a filesystem volume and a raw block volume
// are staged and published; then their disks die (the loop devices are
// detached and the block volume's device node is removed, as a hot-unplug
// does) and the driver restarts without them. The kubelet's unpublish and
// unstage must still take the volumes' own mounts away (else the pods hang
// terminating for ever), while a mount that is not theirs stays.
func TestUnmountsWhenTheDiskIsGone(t *testing.T) {
	e := newEnv(t, []int64{64 << 20, 64 << 20}, nil)
	ctx := context.Background()
	mc, bc := testutil.MountCap("ext4"), testutil.BlockCap()
	fs, blk := e.create("fs", mc, nil), e.create("blk", bc, nil)
	fsSt, fsTg, bSt, bTg := e.path("fs-staging"), e.path("fs-pod/vol"), e.path("b-staging"), e.path("b-pod/dev")
	e.stage(fs, mc, fsSt)
	e.publish(fs, mc, fsSt, fsTg, false)
	e.stage(blk, bc, bSt)
	e.publish(blk, bc, bSt, bTg, false)
	bDev := e.device(blk)
	st, err := os.Stat(bDev)
	if err != nil {
		t.Fatal(err)
	}
	rdev := st.Sys().(*syscall.Stat_t).Rdev
	for _, l := range e.loops {
		testutil.Detach(l.Path)
	}
	if err := os.Remove(bDev); err != nil { // the kernel removes an unplugged disk's node
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := os.Stat(bDev); os.IsNotExist(err) {
			_ = syscall.Mknod(bDev, syscall.S_IFBLK|0o660, int(rdev))
		}
	})
	admin := e.path("admin")
	if err := os.MkdirAll(admin, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", admin)
	t.Cleanup(func() { _ = e.m.Unmount(admin) })
	e.newSource = e.staticSource(e.path("no-disk-here"))
	e.start()

	_, err = e.drv.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: fs.VolumeId, TargetPath: admin})
	wantStatus(t, err, codes.FailedPrecondition, "left mounted")
	for _, c := range []struct {
		v               *csi.Volume
		target, staging string
	}{{fs, fsTg, fsSt}, {blk, bTg, bSt}} {
		if _, err := e.drv.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: c.v.VolumeId, TargetPath: c.target}); err != nil {
			t.Fatalf("unpublish with the disk gone: %v", err)
		}
		if _, err := e.drv.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: c.v.VolumeId, StagingTargetPath: c.staging}); err != nil {
			t.Fatalf("unstage with the disk gone: %v", err)
		}
		for _, p := range []string{c.target, c.staging} {
			if m := e.mountAt(p); m != "" {
				t.Fatalf("%s still mounted: %s", p, m)
			}
		}
	}
	if e.mountAt(admin) == "" {
		t.Fatal("the admin's tmpfs was unmounted")
	}
}

// TestExclusivelyHeldDiskIsNeverHandedOut: another program holds a free
// disk open exclusively, as device-mapper, md, LVM or a database on a raw
// device do (this is the check that catches holders where discovery could
// not see them). GetCapacity and CreateVolume leave it alone, it is
// recorded excluded, a restart while it is held keeps it excluded, and once
// it is let go a restart frees it.
func TestExclusivelyHeldDiskIsNeverHandedOut(t *testing.T) {
	e := newEnv(t, []int64{64 << 20, 32 << 20}, nil)
	held := e.loops[0]
	fd, err := unix.Open(held.Path, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	release := func() {
		if !closed {
			unix.Close(fd)
			closed = true
		}
	}
	t.Cleanup(release)
	sum := deviceSum(t, held.Path)
	if avail, _ := e.capacity(); avail != 32<<20 {
		t.Fatalf("GetCapacity %d with the bigger disk held by another program; want only the other disk, %d", avail, 32<<20)
	}
	v := e.create("pvc", testutil.MountCap("ext4"), nil)
	if v.VolumeContext["disk"] == loopID(held) {
		t.Fatal("the held disk was given out")
	}
	_, err = e.createSized("pvc-2", testutil.MountCap("ext4"), nil, 0)
	wantStatus(t, err, codes.ResourceExhausted)
	if d := e.diskRecord(loopID(held)); d == nil || d.Status != state.Excluded || !strings.Contains(d.Reason, "in use") {
		t.Fatalf("held disk: %+v; want excluded as in use", d)
	}
	e.start()
	if d := e.diskRecord(loopID(held)); d.Status != state.Excluded {
		t.Fatalf("held disk after a restart while still held: %+v; want it still excluded", d)
	}
	release()
	if deviceSum(t, held.Path) != sum {
		t.Fatal("the held disk changed")
	}
	e.start()
	if d := e.diskRecord(loopID(held)); d.Status != state.Free {
		t.Fatalf("disk let go, after a restart: %+v; want free", d)
	}
}

// checkNoPreviousTenant reads n bytes at 32 MiB of the raw volume published
// at target, where an earlier volume of the same disk wrote "previous
// tenant", and fails if they are still there.
func checkNoPreviousTenant(t *testing.T, target string, n int) {
	t.Helper()
	f, err := os.Open(target)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, n)
	if _, err := f.ReadAt(got, 32<<20); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(got, []byte("previous tenant")) {
		t.Fatal("the second raw volume reads the first one's bytes")
	}
}
