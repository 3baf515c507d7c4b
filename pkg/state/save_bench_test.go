package state

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// benchRecord is a node with 24 disks, half of them holding a volume.
func benchRecord() *Record {
	r := New("bench-node")
	for i := 0; i < 24; i++ {
		id := fmt.Sprintf("serial-%02d", i)
		d := &Disk{ID: id, Identity: "serial:" + id, SizeBytes: 1 << 40, Media: "ssd", Status: Free, UpdatedAt: time.Now().UTC()}
		if i%2 == 0 {
			d.Status = Allocated
			d.Volume = &Volume{ID: "ld:bench-node:" + id + ":0123456789ab", Name: "pvc-" + id, CapacityBytes: 1 << 40, FSUUID: "u"}
		}
		r.Disks[id] = d
	}
	return r
}

// BenchmarkSave prints Save's p50 and p99 (both copies written, synced
// and renamed) for a record of 24 disks: one store alone, as a node saves
// on its own system disk, and 20 stores saving at once in directories of
// one filesystem, as the nodes of the StatefulSet benchmark share the
// machine's disk.
func BenchmarkSave(b *testing.B) {
	for _, stores := range []int{1, 20} {
		b.Run(fmt.Sprintf("stores=%d", stores), func(b *testing.B) {
			const saves = 50 // per store and iteration
			var (
				mu    sync.Mutex
				times []time.Duration
			)
			for b.Loop() {
				var wg sync.WaitGroup
				for range stores {
					s, rec := NewStore(b.TempDir()), benchRecord()
					wg.Add(1)
					go func() {
						defer wg.Done()
						for range saves {
							start := time.Now()
							if err := s.Save(rec); err != nil {
								b.Error(err)
								return
							}
							mu.Lock()
							times = append(times, time.Since(start))
							mu.Unlock()
						}
					}()
				}
				wg.Wait()
			}
			b.Logf("Save of 24 disks, %d store(s) at once: %d saves, p50 %v, p99 %v", stores, len(times),
				testutil.Quantile(times, 0.5).Round(10*time.Microsecond), testutil.Quantile(times, 0.99).Round(10*time.Microsecond))
		})
	}
}
