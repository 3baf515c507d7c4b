package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// A real slow mkfs on a sparse loop device: without sparse_super (and so
// without resize_inode) every block group of ext4 carries a copy of the
// superblock and of the whole group descriptor table, so mke2fs writes about
// (size/128 MiB)^2 * 64 bytes: 1.6 GiB for 640 GiB, several seconds.
const (
	slowDiskSize = 640 << 30
	slowMkfs     = "-O ^sparse_super,^resize_inode"
)

// timedStagePublish stages and publishes v and returns how long each call took.
func timedStagePublish(e *env, v *csi.Volume, vc *csi.VolumeCapability, staging, target string) (stage, publish time.Duration) {
	start := time.Now()
	e.stage(v, vc, staging)
	mid := time.Now()
	e.publish(v, vc, staging, target, false)
	return mid.Sub(start), time.Since(mid)
}

// BenchmarkPublishDuringSlowFormat measures NodeStage and NodePublish of a
// blank 64 MiB disk B, once alone and once while NodeStage of another volume
// runs a real slow mkfs on disk A, and prints both with the duration of A's
// format. Each iteration deletes its volumes; A's are cleaned with discard,
// so that every format of A starts from a sparse disk.
func BenchmarkPublishDuringSlowFormat(b *testing.B) {
	e := newEnv(b, []int64{slowDiskSize, 64 << 20}, nil)
	vc := testutil.MountCap("ext4")
	var stageAlone, pubAlone, stageDuring, pubDuring, format time.Duration
	bFirst := 0
	for i := 0; i < b.N; i++ {
		// Alone: the smallest free disk is B.
		vb := e.create(fmt.Sprintf("pvc-b-alone-%d", i), vc, nil)
		s, p := timedStagePublish(e, vb, vc, e.path("b/staging"), e.path("b/pod/volume"))
		stageAlone, pubAlone = stageAlone+s, pubAlone+p
		e.unpublish(vb, e.path("b/pod/volume"))
		e.unstage(vb, e.path("b/staging"))
		e.delete(vb)

		s, p, f, first := stagePublishDuringFormat(e, vc, i)
		stageDuring, pubDuring, format = stageDuring+s, pubDuring+p, format+f
		if first {
			bFirst++
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
	b.ReportMetric(ms(pubDuring), "ms/publish-during-format")
	b.ReportMetric(ms(pubAlone), "ms/publish-alone")
	b.ReportMetric(ms(stageDuring+pubDuring), "ms/stage+publish-during-format")
	b.ReportMetric(ms(stageAlone+pubAlone), "ms/stage+publish-alone")
	b.ReportMetric(ms(format), "ms/slow-format")
	b.Logf("NodePublish of disk B while disk A formats: %.1f ms (alone: %.1f ms)", ms(pubDuring), ms(pubAlone))
	b.Logf("NodeStage+NodePublish of disk B while disk A formats: %.1f ms (alone: %.1f ms); disk A's format: %.0f ms; B done first in %d of %d",
		ms(stageDuring+pubDuring), ms(stageAlone+pubAlone), ms(format), bFirst, b.N)
}

// stagePublishDuringFormat creates a volume on the big disk A and one on B,
// starts NodeStage of A with the slow mkfs options and, once A's format has
// begun, stages and publishes B. It returns B's stage and publish times, the
// duration of A's format and whether B was published before A's format
// ended, after deleting both volumes.
func stagePublishDuringFormat(e *env, vc *csi.VolumeCapability, i int) (stage, publish, format time.Duration, bFirst bool) {
	b := e.t
	b.Helper()
	// A asks for more than B has.
	r, err := e.drv.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: fmt.Sprintf("pvc-a-%d", i), CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 30},
		Parameters:         map[string]string{"mkfsOptions": slowMkfs, "cleanupPolicy": "discard"},
		VolumeCapabilities: []*csi.VolumeCapability{vc},
	})
	if err != nil {
		b.Fatalf("CreateVolume of A: %v", err)
	}
	va := r.Volume
	vb := e.create(fmt.Sprintf("pvc-b-during-%d", i), vc, nil)
	watch := newWatchedFormat(e.m, e.device(va), false)
	e.useMounter(watch)
	defer e.useMounter(nil)
	var aErr error
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		aErr = stageErr(e.drv, va, vc, e.path("a/staging"))
	}()
	// A's stage must have returned before anything is unmounted.
	defer func() {
		select {
		case <-aDone:
		case <-time.After(5 * time.Minute):
			b.Errorf("stage of A still running")
		}
	}()
	await(b, watch.started, 30*time.Second, "A's format to start")
	stage, publish = timedStagePublish(e, vb, vc, e.path("b/staging"), e.path("b/pod/volume"))
	bEnd := time.Now()
	await(b, aDone, 5*time.Minute, "A's stage")
	if aErr != nil {
		b.Fatalf("stage of A: %v", aErr)
	}
	e.unpublish(vb, e.path("b/pod/volume"))
	e.unstage(vb, e.path("b/staging"))
	e.unstage(va, e.path("a/staging"))
	e.delete(vb)
	e.delete(va)
	return stage, publish, watch.end.Sub(watch.begin), bEnd.Before(watch.end)
}
