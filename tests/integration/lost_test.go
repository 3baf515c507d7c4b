package integration

import (
	"context"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// TestBlankDiskReportsVolumeLost: the disks of a redeployed instance come
// back blank under the same identity. A volume whose filesystem the driver
// made, not in use, is then reported lost (abnormal, with why), after a
// restart too; nothing is written to its disk, NodeStage refuses it, and a
// volume still mounted, or one never formatted, is not called lost.
func TestBlankDiskReportsVolumeLost(t *testing.T) {
	e := newEnv(t, []int64{64 << 20, 64 << 20, 64 << 20}, nil)
	ctx := context.Background()
	vc := testutil.MountCap("ext4")
	lost, mounted, fresh := e.create("lost", vc, nil), e.create("mounted", vc, nil), e.create("fresh", vc, nil)
	stLost, stMounted := e.path("staging-lost"), e.path("staging-mounted")
	e.stage(lost, vc, stLost)
	e.unstage(lost, stLost)
	e.stage(mounted, vc, stMounted)

	// The redeploy: every byte of the disks that are not mounted reads
	// zero. The mounted one loses its superblock under its mount: in use,
	// it is not the driver's to judge.
	for _, v := range []*csi.Volume{lost, fresh} {
		run(t, "blkdiscard", "--zeroout", e.device(v))
	}
	run(t, "dd", "if=/dev/zero", "of="+e.device(mounted), "bs=1M", "count=1", "oflag=direct", "conv=notrunc", "status=none")
	sum := deviceSum(t, e.device(lost))

	n, err := e.drv.CheckLost(ctx)
	if err != nil || n != 1 {
		t.Fatalf("CheckLost found %d lost, %v; want 1 (only the formatted volume that is not in use)", n, err)
	}
	for _, v := range []*csi.Volume{mounted, fresh} {
		if got, err := e.inv.Lookup(v.VolumeId); err != nil || got.Lost != "" {
			t.Fatalf("volume %s reported lost: %q %v", v.VolumeId, got.Lost, err)
		}
	}
	got, err := e.inv.Lookup(lost.VolumeId)
	if err != nil || !strings.Contains(got.Lost, "reads blank") || got.Abnormal == "" {
		t.Fatalf("lost volume: %+v %v", got.Volume, err)
	}
	if n, err := e.drv.CheckLost(ctx); err != nil || n != 0 {
		t.Fatalf("second check: %d %v", n, err)
	}
	_, err = e.drv.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: lost.VolumeId, StagingTargetPath: stLost, VolumeCapability: vc})
	wantStatus(t, err, codes.FailedPrecondition, "never formats it again")
	st, err := e.drv.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: lost.VolumeId, VolumePath: stLost})
	if err != nil || !st.GetVolumeCondition().GetAbnormal() || !strings.Contains(st.GetVolumeCondition().GetMessage(), "reads blank") {
		t.Fatalf("condition %v %v", st.GetVolumeCondition(), err)
	}
	e.start() // a restarted driver still knows
	if got, err := e.inv.Lookup(lost.VolumeId); err != nil || got.Lost == "" {
		t.Fatalf("after a restart: %+v %v", got.Volume, err)
	}
	if deviceSum(t, e.device(lost)) != sum || e.mountAt(stLost) != "" {
		t.Fatal("the lost volume's disk was written or mounted")
	}
	e.unstage(mounted, stMounted)
	// The volume never formatted takes its filesystem as usual.
	stFresh := e.path("staging-fresh")
	e.stage(fresh, vc, stFresh)
	e.unstage(fresh, stFresh)
}
