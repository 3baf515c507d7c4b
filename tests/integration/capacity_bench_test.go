package integration

import (
	"context"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// BenchmarkGetCapacity24Disks times GetCapacity, as csi-provisioner calls
// it, on a node with 24 free loop-device disks (the largest ECS local-disk
// count). The first call after start probes every disk (blkid, wipefs);
// the next ones find each disk unchanged by its counters and look only at
// its use. It prints the first call's time and the median and 99th
// percentile of the 200 calls after it (target: p99 under 1 ms).
func BenchmarkGetCapacity24Disks(b *testing.B) {
	sizes := make([]int64, 24)
	for i := range sizes {
		sizes[i] = 64 << 20
	}
	ctx := context.Background()
	const calls = 200
	var all, cold []time.Duration
	call := func(e *env) time.Duration {
		start := time.Now()
		r, err := e.drv.GetCapacity(ctx, &csi.GetCapacityRequest{})
		if err != nil || r.AvailableCapacity != 24*64<<20 {
			b.Fatalf("GetCapacity: %v %v", r, err)
		}
		return time.Since(start)
	}
	for n := 0; n < b.N; n++ {
		b.StopTimer()
		e := newEnv(b, sizes, nil)
		b.StartTimer()
		cold = append(cold, call(e))
		for i := 0; i < calls; i++ {
			all = append(all, call(e))
		}
	}
	b.ReportMetric(float64(testutil.Quantile(cold, 0.5).Microseconds()), "us-first-call")
	b.ReportMetric(float64(testutil.Quantile(all, 0.5).Microseconds()), "us-p50/call")
	b.ReportMetric(float64(testutil.Quantile(all, 0.99).Microseconds()), "us-p99/call")
}
