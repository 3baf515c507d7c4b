package driver

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
)

// BenchmarkCreateVolume measures CreateVolume on a node with 24 disks (the
// largest ECS local-disk count). Each call persists the state record with
// fsync before answering, so this is the allocator's real cost per claim.
// Deleting and cleaning between calls is not timed.
func BenchmarkCreateVolume(b *testing.B) {
	var disks []disk.Disk
	for i := 0; i < 24; i++ {
		disks = append(disks, fakeDisk(i, gib, disk.MediaSSD))
	}
	f := newFixture(b, disks...)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := f.d.CreateVolume(ctx, createReq(fmt.Sprintf("pvc-%d", i), 0, 0, nil))
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if _, err := f.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: r.Volume.VolumeId}); err != nil {
			b.Fatal(err)
		}
		if err := f.inv.WaitIdle(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkCreateDeleteCycle times CreateVolume then DeleteVolume of one
// claim, 1000 times per run, on a node with 24 disks, each answered after
// the state record is synced; the cleanup between cycles (signatures, on
// the fake devices) is not timed. It prints the median and the 99th
// percentile of a cycle.
func BenchmarkCreateDeleteCycle(b *testing.B) {
	var disks []disk.Disk
	for i := 0; i < 24; i++ {
		disks = append(disks, fakeDisk(i, gib, disk.MediaSSD))
	}
	f := newFixture(b, disks...)
	ctx := context.Background()
	const cycles = 1000
	var all []time.Duration
	for n := 0; n < b.N; n++ {
		for i := 0; i < cycles; i++ {
			start := time.Now()
			r, err := f.d.CreateVolume(ctx, createReq(fmt.Sprintf("pvc-%d-%d", n, i), 0, 0, nil))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.d.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: r.Volume.VolumeId}); err != nil {
				b.Fatal(err)
			}
			all = append(all, time.Since(start))
			b.StopTimer()
			if err := f.inv.WaitIdle(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	b.ReportMetric(float64(testutil.Quantile(all, 0.5).Microseconds()), "us-p50/cycle")
	b.ReportMetric(float64(testutil.Quantile(all, 0.99).Microseconds()), "us-p99/cycle")
}
