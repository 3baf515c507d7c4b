package mounter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// wipeBenchBytes is how much each cleanup in BenchmarkCleanupPerTiB covers:
// a few GiB, written for real, then extrapolated per TiB.
const wipeBenchBytes = 2 << 30

// BenchmarkCleanupPerTiB times each cleanup policy on a 2 GiB loop device
// that was filled with data first (so that discards and zeroes have
// something to release), and prints its throughput and the time it would
// take per TiB at that rate (extrapolated: a TiB is not written here). The
// loop device's backing file lives on this machine's own disk, so the
// figures are that disk's, through a file; the README gives the local-disk
// expectations. The variants:
//
//   - signatures: wipefs --all; its time does not grow with the disk.
//   - discard: blkdiscard, which a loop device turns into holes in its
//     file; an NVMe SSD deallocates the blocks.
//   - zero: BLKZEROOUT (the same request as blkdiscard --zeroout, the
//     path of the zeroing before a raw hand-out): the device or its driver
//     zeroes, here by a hole punched in the file.
//   - zero-written: zeroes written from the driver, the path taken where
//     the device refuses BLKZEROOUT; every byte goes to the disk.
//   - shred: one pass of random data written, then the zero pass as above.
func BenchmarkCleanupPerTiB(b *testing.B) {
	testutil.RequireRoot(b)
	variants := []struct {
		name    string
		policy  CleanupPolicy
		written bool // BLKZEROOUT refused: zeroes written
	}{
		{"signatures", CleanupSignatures, false},
		{"discard", CleanupDiscard, false},
		{"zero", CleanupZero, false},
		{"zero-written", CleanupZero, true},
		{"shred", CleanupShred, false},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			var took time.Duration
			// The timer keeps running through the fill, so that the
			// benchmark framework never asks for more rounds of it: the
			// figures are the wipes' own, timed here.
			for i := 0; i < b.N; i++ {
				l := testutil.NewLoop(b, "", wipeBenchBytes)
				fill(b, l.Path, wipeBenchBytes)
				r := New()
				if v.written {
					r.zeroOut = func(*os.File, int64, int64) error { return unix.EOPNOTSUPP }
				}
				o := WipeOptions{Checkpoint: func(WipeProgress) error { return nil }, CheckpointEvery: 10 * time.Second}
				if i == 0 {
					fmt.Printf("cleanup %s: %s of a %s loop device, %s\n", v.name, sizeOf(wipeBenchBytes), sizeOf(wipeBenchBytes), queueLimits(l.Path))
				}
				start := time.Now()
				if err := r.Wipe(context.Background(), l.Path, v.policy, o); err != nil {
					b.Fatal(err)
				}
				took += time.Since(start)
				testutil.Detach(l.Path)
			}
			per := took / time.Duration(b.N)
			if v.policy == CleanupSignatures {
				b.ReportMetric(per.Seconds(), "s/disk-any-size")
				return
			}
			rate := float64(wipeBenchBytes) / per.Seconds()
			b.ReportMetric(rate/(1<<20), "MiB/s")
			b.ReportMetric(float64(1<<40)/rate, "s/TiB-extrapolated")
		})
	}
}

// fill writes n bytes of a non-zero pattern over dev and syncs them.
func fill(b *testing.B, dev string, n int64) {
	b.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 16<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < n; off += int64(len(buf)) {
		if _, err := f.WriteAt(buf[:min(int64(len(buf)), n-off)], off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

// queueLimits reads what the device's queue says it can offload: the
// largest discard and write-zeroes requests (0: none).
func queueLimits(dev string) string {
	q := filepath.Join("/sys/block", filepath.Base(dev), "queue")
	read := func(name string) string {
		v, err := os.ReadFile(filepath.Join(q, name))
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(string(v))
	}
	return "discard_max_bytes=" + read("discard_max_bytes") + " write_zeroes_max_bytes=" + read("write_zeroes_max_bytes")
}

func sizeOf(n int64) string { return fmt.Sprintf("%d GiB", n>>30) }
