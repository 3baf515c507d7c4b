package integration

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
)

// TestSerialLessFallbackSurvivesRename runs the serial-less fallback on two
// loop devices with consecutive names: both are pinned at first use; a
// filesystem volume keeps clear of the pin; raw block is refused; after the
// two devices trade names the volume is still found on its own disk with its
// data; a zeroing cleanup gives the disk its pin back.
func TestSerialLessFallbackSurvivesRename(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	loops := testutil.NewLoopRun(t, dir, 64<<20, 2)
	f := cloud.NewFake(cloud.Instance{ID: "i-old", Type: "ecs.d1.old", Region: "cn-beijing", Zone: "cn-beijing-a"})
	defer f.Close()
	f.Types["ecs.d1.old"] = cloud.InstanceType{LocalStorageAmount: 2, LocalStorageGiB: 5500, LocalStorageCategory: "local_hdd_pro"}
	f.Disks = []cloud.FakeDisk{
		{ID: "d-old0", Category: "local_hdd_pro", InstanceID: "i-old", SizeGiB: 5500},
		{ID: "d-old1", Category: "local_hdd_pro", InstanceID: "i-old", SizeGiB: 5500},
	}
	e := newECSEnv(t, dir, loops, f, &cloud.Fallback{StartWith: filepath.Base(loops[0].Path), Pinner: cloud.DevicePinner{}})
	start := e.start
	if n := e.inv.ManagedDisks(); n != 2 {
		rec, _ := e.inv.Snapshot()
		t.Fatalf("%d disks pinned, problems %v", n, rec.Problems)
	}
	pinOf := func(path string) cloud.Pin {
		p, ok, err := cloud.DevicePinner{}.Read(path)
		if err != nil || !ok {
			t.Fatalf("no pin on %s: %v", path, err)
		}
		return p
	}
	pins := map[string]string{loops[0].Backing: pinOf(loops[0].Path).ID, loops[1].Backing: pinOf(loops[1].Path).ID}

	// Raw block volumes are refused: a pod would own the pin's bytes. The
	// answer is RESOURCE_EXHAUSTED, so that the provisioner tries another
	// node, and GetCapacity for block agrees: nothing here.
	_, err := e.drv.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "raw", VolumeCapabilities: []*csi.VolumeCapability{testutil.BlockCap()}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("raw block on pinned disks: %v, want ResourceExhausted", err)
	}
	if c, err := e.drv.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{testutil.BlockCap()}}); err != nil || c.AvailableCapacity != 0 {
		t.Fatalf("GetCapacity for block on pinned disks = %v, %v; want 0", c, err)
	}
	// csi-provisioner asks without capabilities: a class with volumeMode
	// Block gets the same answer as a block CreateVolume, and refuses a
	// filesystem claim.
	blockClass := map[string]string{"volumeMode": "Block"}
	if c, err := e.drv.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: blockClass}); err != nil || c.AvailableCapacity != 0 {
		t.Fatalf("GetCapacity of a Block class on pinned disks = %v, %v; want 0", c, err)
	}
	_, err = e.drv.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "raw", Parameters: blockClass, VolumeCapabilities: []*csi.VolumeCapability{testutil.BlockCap()}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("raw block of a Block class on pinned disks: %v, want ResourceExhausted", err)
	}
	_, err = e.drv.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "fs", Parameters: blockClass, VolumeCapabilities: []*csi.VolumeCapability{testutil.MountCap("ext4")}})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("filesystem claim of a Block class: %v, want InvalidArgument", err)
	}
	vc := testutil.MountCap("ext4")
	v := e.create("pvc-old", vc, map[string]string{"cleanupPolicy": "zero", "diskCategory": "local_hdd_pro"})
	if v.CapacityBytes != 64<<20-cloud.PinReserve {
		t.Fatalf("capacity %d, want the disk less the pin reserve", v.CapacityBytes)
	}
	staging, target := e.path("staging"), e.path("pod")
	e.stage(v, vc, staging)
	dev := e.device(v)
	var backing string
	for _, l := range loops {
		if l.Path == dev {
			backing = l.Backing
		}
	}
	out := run(t, "dumpe2fs", "-h", dev)
	blocks, bsize := dumpField(t, out, "Block count:"), dumpField(t, out, "Block size:")
	if blocks*bsize > 64<<20-cloud.PinReserve {
		t.Fatalf("filesystem of %d bytes reaches into the pin reserve", blocks*bsize)
	}
	e.publish(v, vc, staging, target, false)
	data := strings.Repeat("x", 40<<20) // most of the filesystem
	if err := os.WriteFile(filepath.Join(target, "big"), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	e.unpublish(v, target)
	e.unstage(v, staging)
	if p := pinOf(dev); p.ID != pins[backing] {
		t.Fatalf("pin changed by the filesystem: %+v", p)
	}

	// A reboot renames the two disks.
	testutil.Swap(t, &loops[0], &loops[1])
	start()
	e.stage(v, vc, staging)
	if now := e.device(v); now == dev {
		t.Fatalf("volume still found at %s after the rename", now)
	}
	e.publish(v, vc, staging, target, false)
	if b, err := os.ReadFile(filepath.Join(target, "big")); err != nil || len(b) != len(data) {
		t.Fatalf("data not found after the rename: %v", err)
	}
	e.unpublish(v, target)
	e.unstage(v, staging)
	newDev := e.device(v)
	e.delete(v)
	if p := pinOf(newDev); p.ID != pins[backing] {
		t.Fatalf("pin after zeroing: %+v, want %s", p, pins[backing])
	}
	if n := e.inv.ManagedDisks(); n != 2 {
		t.Fatalf("%d managed disks after cleaning", n)
	}
}

func dumpField(t *testing.T, out, field string) int64 {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	t.Fatalf("dumpe2fs has no %q", field)
	return 0
}
