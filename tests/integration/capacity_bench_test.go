package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// BenchmarkGetCapacity24Disks times GetCapacity, as csi-provisioner calls
// it, on a node with 24 free loop-device disks (the largest ECS local-disk
// count): each free disk is looked at on the device before it counts. It
// prints the median and the 99th percentile of 200 calls per run.
func BenchmarkGetCapacity24Disks(b *testing.B) {
	sizes := make([]int64, 24)
	for i := range sizes {
		sizes[i] = 64 << 20
	}
	e := newEnv(b, sizes, nil)
	ctx := context.Background()
	const calls = 200
	var all []time.Duration
	for n := 0; n < b.N; n++ {
		for i := 0; i < calls; i++ {
			start := time.Now()
			r, err := e.drv.GetCapacity(ctx, &csi.GetCapacityRequest{})
			if err != nil || r.AvailableCapacity != 24*64<<20 {
				b.Fatalf("GetCapacity: %v %v", r, err)
			}
			all = append(all, time.Since(start))
		}
	}
	slices.Sort(all)
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "us-p50/call")
	b.ReportMetric(float64(all[min(len(all)-1, len(all)*99/100)].Microseconds()), "us-p99/call")
}
