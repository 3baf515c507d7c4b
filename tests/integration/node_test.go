package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// xfs needs at least 300 MiB; the files are sparse.
const diskSize = 512 << 20

// TestFilesystemLifecycle formats, mounts, writes, unmounts and re-stages each
// filesystem type, and checks that the class's mkfs and mount options reached
// the tools.
func TestFilesystemLifecycle(t *testing.T) {
	cases := []struct {
		fs, mkfs string
		flags    []string
		check    func(t *testing.T, dev string)
	}{
		{"ext4", "-m 0 -L itest -E stride=4", []string{"noatime", "commit=30"}, func(t *testing.T, dev string) {
			out := run(t, "dumpe2fs", "-h", dev)
			for _, want := range []string{"Reserved block count:     0", "Filesystem volume name:   itest", "RAID stride:              4"} {
				if !strings.Contains(out, want) {
					t.Errorf("dumpe2fs -h lacks %q:\n%s", want, out)
				}
			}
		}},
		{"xfs", "-L itest -i size=512", []string{"noatime"}, func(t *testing.T, dev string) {
			if out := run(t, "xfs_info", dev); !strings.Contains(out, "isize=512") {
				t.Errorf("xfs_info lacks isize=512:\n%s", out)
			}
			if out := run(t, "blkid", "-p", "-o", "value", "-s", "LABEL", dev); strings.TrimSpace(out) != "itest" {
				t.Errorf("label %q, want itest", out)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.fs, func(t *testing.T) {
			e := newEnv(t, []int64{diskSize}, nil)
			vc := testutil.MountCap(c.fs, c.flags...)
			v := e.create("pvc-"+c.fs, vc, map[string]string{"mkfsOptions": c.mkfs})
			if v.CapacityBytes != diskSize {
				t.Fatalf("capacity %d, want the whole disk %d", v.CapacityBytes, diskSize)
			}
			staging, target := e.path("staging"), e.path("pod/mount")
			e.stage(v, vc, staging)
			dev := e.device(v)
			c.check(t, dev)
			line := e.mountAt(staging)
			for _, f := range c.flags {
				if !strings.Contains(line, f) {
					t.Errorf("mountinfo of %s lacks %q: %s", staging, f, line)
				}
			}
			if !strings.Contains(line, " "+c.fs+" ") {
				t.Errorf("staging is not %s: %s", c.fs, line)
			}
			e.publish(v, vc, staging, target, false)
			data := make([]byte, 1<<20)
			rand.Read(data)
			if err := os.WriteFile(filepath.Join(target, "data"), data, 0o600); err != nil {
				t.Fatal(err)
			}
			e.unpublish(v, target)
			e.unstage(v, staging)
			// Staging again must not format: the data survives.
			e.stage(v, vc, staging)
			e.publish(v, vc, staging, target, false)
			got, err := os.ReadFile(filepath.Join(target, "data"))
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("data not intact after re-stage: %v", err)
			}
			// Stage and publish again with the same arguments are no-ops.
			e.stage(v, vc, staging)
			e.publish(v, vc, staging, target, false)
			e.unpublish(v, target)
			e.unstage(v, staging)
			e.delete(v)
			if p, err := e.m.Probe(context.Background(), dev); err != nil || len(p.Signatures) != 0 {
				t.Fatalf("disk not clean after delete: %v %v", p.Signatures, err)
			}
		})
	}
}

// TestBlockPublishReadBack publishes a raw block volume and reads back through
// the device what was written through the published file.
func TestBlockPublishReadBack(t *testing.T) {
	e := newEnv(t, []int64{64 << 20}, nil)
	vc := testutil.BlockCap()
	v := e.create("pvc-block", vc, nil)
	staging, target := e.path("staging"), e.path("pod/dev")
	e.stage(v, vc, staging)
	e.publish(v, vc, staging, target, false)
	msg := make([]byte, 4096)
	rand.Read(msg)
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(msg, 8<<20); err != nil {
		t.Fatal(err)
	}
	f.Sync()
	f.Close()
	dev, err := os.Open(e.device(v))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	got := make([]byte, len(msg))
	if _, err := dev.ReadAt(got, 8<<20); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("device does not hold what was written: %v", err)
	}
	st, err := e.drv.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: target})
	if err != nil || st.Usage[0].Total != 64<<20 || st.VolumeCondition.GetAbnormal() {
		t.Fatalf("block stats %+v %v", st, err)
	}
	e.unpublish(v, target)
	e.unstage(v, staging)
	e.delete(v)
}

// TestReadOnlyPublish refuses writes through a read-only publish of both kinds.
func TestReadOnlyPublish(t *testing.T) {
	e := newEnv(t, []int64{64 << 20, 64 << 20}, nil)
	fsCap := testutil.MountCap("ext4")
	v := e.create("pvc-ro", fsCap, nil)
	staging, target := e.path("staging"), e.path("pod/ro")
	e.stage(v, fsCap, staging)
	e.publish(v, fsCap, staging, target, true)
	err := os.WriteFile(filepath.Join(target, "x"), []byte("x"), 0o600)
	if !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write through read-only publish: %v, want EROFS", err)
	}
	// Publishing the same target read-write is a conflict.
	_, err = e.drv.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: v.VolumeId, StagingTargetPath: staging, TargetPath: target, VolumeCapability: fsCap})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("re-publish read-write: %v, want AlreadyExists", err)
	}
	e.unpublish(v, target)
	e.unstage(v, staging)

	bc := testutil.BlockCap()
	b := e.create("pvc-ro-block", bc, nil)
	btarget := e.path("pod/ro-block")
	e.stage(b, bc, e.path("staging-b"))
	e.publish(b, bc, e.path("staging-b"), btarget, true)
	if err := writeAt(btarget, []byte("x"), 0); err == nil {
		t.Fatal("wrote through a read-only block publish")
	}
	// A second, read-write publication of the same volume is refused: the
	// kernel's read-only flag is the whole device's, and clearing it would
	// make the read-only publication writable.
	rw := e.path("pod/rw-block")
	_, err = e.drv.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: b.VolumeId, StagingTargetPath: e.path("staging-b"), TargetPath: rw, VolumeCapability: bc})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("read-write publication beside a read-only one: %v, want FailedPrecondition", err)
	}
	if err := writeAt(btarget, []byte("x"), 0); err == nil {
		t.Fatal("wrote through a read-only block publish after a read-write one was asked for")
	}
	e.unpublish(b, btarget)
	if err := writeAt(e.device(b), []byte("x"), 0); err != nil {
		t.Fatalf("device still read-only after its last publication left: %v", err)
	}
}

// TestVolumeStatsAndCondition reports usage and flags a filesystem that the
// kernel turned read-only after an error.
func TestVolumeStatsAndCondition(t *testing.T) {
	e := newEnv(t, []int64{128 << 20}, nil)
	vc := testutil.MountCap("ext4")
	v := e.create("pvc-stats", vc, nil)
	staging, target := e.path("staging"), e.path("pod/m")
	e.stage(v, vc, staging)
	e.publish(v, vc, staging, target, false)
	stats := func() *csi.NodeGetVolumeStatsResponse {
		t.Helper()
		r, err := e.drv.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: target})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	before := stats()
	if err := os.WriteFile(filepath.Join(target, "f"), make([]byte, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	syscall.Sync()
	after := stats()
	b, a := before.Usage[0], after.Usage[0]
	if b.Total <= 0 || a.Used-b.Used < 8<<20 || after.Usage[1].Total <= 0 || after.Usage[1].Used <= before.Usage[1].Used-1 {
		t.Fatalf("usage before %+v after %+v", before.Usage, after.Usage)
	}
	if after.VolumeCondition.GetAbnormal() {
		t.Fatalf("healthy volume reported abnormal: %v", after.VolumeCondition)
	}
	// A path where the volume is not: NOT_FOUND.
	other := e.path("elsewhere")
	os.MkdirAll(other, 0o750)
	if _, err := e.drv.NodeGetVolumeStats(context.Background(), &csi.NodeGetVolumeStatsRequest{VolumeId: v.VolumeId, VolumePath: other}); status.Code(err) != codes.NotFound {
		t.Fatalf("stats at a foreign path: %v, want NotFound", err)
	}
	// Make ext4 hit an error: with errors=remount-ro it turns read-only.
	trigger := filepath.Join("/sys/fs/ext4", filepath.Base(e.device(v)), "trigger_fs_error")
	if err := os.WriteFile(trigger, []byte("test"), 0o200); err != nil {
		t.Fatalf("cannot trigger an ext4 error through %s: %v", trigger, err)
	}
	cond := stats().VolumeCondition
	if !cond.GetAbnormal() || !strings.Contains(cond.GetMessage(), "read-only") {
		t.Fatalf("condition after filesystem error: %+v", cond)
	}
	e.unpublish(v, target)
	e.unstage(v, staging)
}

// TestCleanupPolicies deletes a volume under each policy and checks the disk
// is left as the policy promises.
func TestCleanupPolicies(t *testing.T) {
	for _, policy := range []string{"signatures", "discard", "zero", "shred"} {
		t.Run(policy, func(t *testing.T) {
			e := newEnv(t, []int64{32 << 20}, nil)
			// A filesystem, then random data after the superblock region.
			vc := testutil.MountCap("ext4")
			v := e.create("pvc-"+policy, vc, map[string]string{"cleanupPolicy": policy})
			e.stage(v, vc, e.path("staging"))
			e.unstage(v, e.path("staging"))
			dev := e.device(v)
			junk := make([]byte, 1<<20)
			rand.Read(junk)
			f, err := os.OpenFile(dev, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt(junk, 16<<20)
			f.Sync()
			f.Close()
			e.delete(v)
			if p, err := e.m.Probe(context.Background(), dev); err != nil || len(p.Signatures) != 0 {
				t.Fatalf("signatures left: %v %v", p.Signatures, err)
			}
			if policy == "zero" || policy == "shred" {
				if off, ok := allZero(t, dev); !ok {
					t.Fatalf("byte at %d is not zero after %s", off, policy)
				}
			}
		})
	}
}

func writeAt(path string, b []byte, off int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		return err
	}
	return f.Sync()
}

// allZero reads the whole device and returns the offset of the first non-zero
// byte.
func allZero(t *testing.T, dev string) (int64, bool) {
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var off int64
	for {
		n, err := f.Read(buf)
		for i := 0; i < n; i++ {
			if buf[i] != 0 {
				return off + int64(i), false
			}
		}
		off += int64(n)
		if err == io.EOF {
			return off, true
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestForeignFilesystemNeverTouched: a disk holding a filesystem the driver
// did not create is never allocated, formatted or wiped.
func TestForeignFilesystemNeverTouched(t *testing.T) {
	var foreign testutil.Loop
	e := newEnv(t, []int64{64 << 20, 64 << 20}, func(loops []testutil.Loop) {
		foreign = loops[0]
		run(t, "mkfs.ext4", "-q", "-L", "precious", foreign.Path)
		mnt := t.TempDir()
		run(t, "mount", foreign.Path, mnt)
		os.WriteFile(filepath.Join(mnt, "keep"), []byte("user data"), 0o600)
		run(t, "umount", mnt)
	})
	uuidBefore := run(t, "blkid", "-p", "-o", "value", "-s", "UUID", foreign.Path)
	_, excluded := e.inv.Snapshot()
	if len(excluded) != 1 || excluded[0].Disk.Path != foreign.Path || !strings.Contains(excluded[0].Reason, "ext4") {
		t.Fatalf("excluded = %+v; want the foreign disk with a reason naming ext4", excluded)
	}
	info, _ := e.drv.NodeGetInfo(context.Background(), &csi.NodeGetInfoRequest{})
	if info.MaxVolumesPerNode != 1 {
		t.Fatalf("max_volumes_per_node = %d, want 1 (the foreign disk is not managed)", info.MaxVolumesPerNode)
	}
	bc := testutil.BlockCap()
	v := e.create("pvc-1", bc, nil)
	if dev := e.device(v); dev == foreign.Path {
		t.Fatal("the foreign disk was allocated")
	}
	_, err := e.drv.CreateVolume(context.Background(), &csi.CreateVolumeRequest{Name: "pvc-2", VolumeCapabilities: []*csi.VolumeCapability{bc}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second volume: %v, want ResourceExhausted", err)
	}
	e.delete(v)
	e.start() // a restart changes nothing for the foreign disk
	if uuidAfter := run(t, "blkid", "-p", "-o", "value", "-s", "UUID", foreign.Path); uuidAfter != uuidBefore {
		t.Fatalf("foreign filesystem UUID changed: %s -> %s", uuidBefore, uuidAfter)
	}
	mnt := t.TempDir()
	run(t, "mount", "-o", "ro", foreign.Path, mnt)
	defer run(t, "umount", mnt)
	if b, err := os.ReadFile(filepath.Join(mnt, "keep")); err != nil || string(b) != "user data" {
		t.Fatalf("foreign data changed: %q %v", b, err)
	}
}

// TestRestartKeepsAllocations: after a restart the same name gets the same
// volume, and a volume deleted just before the restart is cleaned.
func TestRestartKeepsAllocations(t *testing.T) {
	e := newEnv(t, []int64{32 << 20, 32 << 20}, nil)
	bc := testutil.BlockCap()
	v := e.create("pvc-keep", bc, nil)
	e.start()
	again := e.create("pvc-keep", bc, nil)
	if again.VolumeId != v.VolumeId {
		t.Fatalf("after restart the same name got %s, want %s", again.VolumeId, v.VolumeId)
	}
	e.delete(v)
	c, err := e.drv.GetCapacity(context.Background(), &csi.GetCapacityRequest{})
	if err != nil || c.AvailableCapacity != 64<<20 {
		t.Fatalf("capacity after delete: %v %v", c, err)
	}
}

// TestDeleteRefusesPublishedBlockVolume: DeleteVolume of a raw block volume
// still bind-mounted into a pod is refused and the data stays.
func TestDeleteRefusesPublishedBlockVolume(t *testing.T) {
	e := newEnv(t, []int64{32 << 20}, nil)
	bc := testutil.BlockCap()
	v := e.create("pvc-busy", bc, nil)
	target := e.path("pod/dev")
	e.stage(v, bc, e.path("staging"))
	e.publish(v, bc, e.path("staging"), target, false)
	if err := writeAt(target, []byte("keep me"), 4096); err != nil {
		t.Fatal(err)
	}
	_, err := e.drv.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.VolumeId})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), target) {
		t.Fatalf("DeleteVolume of a published block volume: %v", err)
	}
	got := make([]byte, 7)
	f, _ := os.Open(e.device(v))
	f.ReadAt(got, 4096)
	f.Close()
	if string(got) != "keep me" {
		t.Fatalf("data changed: %q", got)
	}
	e.unpublish(v, target)
	e.unstage(v, e.path("staging"))
	e.delete(v)
}
