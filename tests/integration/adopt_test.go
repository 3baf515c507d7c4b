package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// TestLostStateVolumesRecoveredFromDisks: with both copies of the node
// state gone, a disk holding a volume's filesystem is left alone (not
// free, not formatted); a request naming that volume recovers it from the
// disk, whose filesystem UUID is derived from the volume ID, with its
// data; a forged ID for the same disk recovers nothing; deleting the
// recovered volume cleans and frees its disk.
func TestLostStateVolumesRecoveredFromDisks(t *testing.T) {
	const size = 64 << 20
	e := newEnv(t, []int64{size, size}, nil)
	vc := testutil.MountCap("ext4")
	v := e.create("pvc-kept", vc, nil)
	staging, target := e.path("staging"), e.path("target")
	e.stage(v, vc, staging)
	e.publish(v, vc, staging, target, false)
	data := []byte("must survive the loss of the node state")
	if err := os.WriteFile(filepath.Join(target, "data"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	e.unpublish(v, target)
	e.unstage(v, staging)

	// Both copies lost (removed by an operator, say).
	store := state.NewStore(filepath.Join(e.dir, "state"))
	for _, p := range []string{store.Path(), store.BackupPath()} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	e.start()
	if avail, _ := e.capacity(); avail != size {
		t.Fatalf("capacity %d after the state was lost; want only the blank disk (%d)", avail, size)
	}

	// A forged ID for the same disk (another allocation nonce) does not
	// match the filesystem: NOT_FOUND, nothing touched.
	forged := &csi.Volume{VolumeId: v.VolumeId[:strings.LastIndexByte(v.VolumeId, ':')+1] + "000000000000", VolumeContext: v.VolumeContext}
	if err := e.stageErr(forged, vc, e.path("forged")); status.Code(err) != codes.NotFound {
		t.Fatalf("stage of a forged ID: %v; want NOT_FOUND", err)
	}

	e.stage(v, vc, staging)
	e.publish(v, vc, staging, target, false)
	got, err := os.ReadFile(filepath.Join(target, "data"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data after recovery: %q, %v", got, err)
	}
	e.unpublish(v, target)
	e.unstage(v, staging)
	e.delete(v)
	if avail, _ := e.capacity(); avail != 2*size {
		t.Fatalf("capacity %d after deleting the recovered volume; want both disks (%d)", avail, 2*size)
	}
}

// TestForeignFilesystemOnVolumeDiskNotMounted: a volume's disk that holds
// an ext4 filesystem the driver did not make for it (made behind the
// driver's back after allocation) is refused by NodeStage with
// FAILED_PRECONDITION naming both UUIDs; it is neither mounted nor
// formatted, and its bytes are unchanged.
func TestForeignFilesystemOnVolumeDiskNotMounted(t *testing.T) {
	e := newEnv(t, []int64{64 << 20}, nil)
	vc := testutil.MountCap("ext4")
	v := e.create("pvc-foreign", vc, nil)
	dev := e.device(v)
	const foreign = "0badc0de-0000-4000-8000-000000000001"
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-U", foreign, dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	before := fingerprintOf(t, dev)
	staging := e.path("staging")
	err := e.stageErr(v, vc, staging)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), foreign) || !strings.Contains(err.Error(), e.diskRecord(v.VolumeContext["disk"]).Volume.FSUUID) {
		t.Fatalf("stage over a foreign filesystem: %v; want FAILED_PRECONDITION naming both UUIDs", err)
	}
	if m := e.mountAt(staging); m != "" {
		t.Fatalf("staging path mounted: %s", m)
	}
	if after := fingerprintOf(t, dev); after != before {
		t.Fatal("the device changed")
	}
}
