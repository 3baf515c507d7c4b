package integration

import (
	"fmt"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

const tib = int64(1) << 40

// allocated is how many bytes of a sparse backing file have been written.
func allocated(t testing.TB, path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// stageOnce creates and stages one volume of fsType on a fresh sparse disk of
// size bytes and returns how many bytes formatting wrote and how long staging
// took.
func stageOnce(t testing.TB, size int64, fsType string) (int64, time.Duration) {
	e := newEnv(t, []int64{size}, nil)
	vc := testutil.MountCap(fsType)
	v := e.create("pvc-big", vc, nil)
	before := allocated(t, e.loops[0].Backing)
	start := time.Now()
	e.stage(v, vc, e.path("staging"))
	took := time.Since(start)
	written := allocated(t, e.loops[0].Backing) - before
	e.unstage(v, e.path("staging"))
	return written, took
}

// TestFormatDoesNotScaleWithDiskSize formats a 1 TiB sparse disk through
// NodeStage and checks how much mkfs wrote: without the driver's defaults
// (no discard, lazy inode tables and journal) mke2fs would write every inode
// table. xfs zeroes its log, which mkfs.xfs caps at 2 GiB whatever the size.
func TestFormatDoesNotScaleWithDiskSize(t *testing.T) {
	for fs, limit := range map[string]int64{"ext4": 64 << 20, "xfs": 2 << 30} {
		t.Run(fs, func(t *testing.T) {
			written, took := stageOnce(t, tib, fs)
			t.Logf("%s on 1 TiB: mkfs wrote %d MiB, stage took %v", fs, written>>20, took)
			if written > limit {
				t.Fatalf("%s on 1 TiB wrote %d MiB, more than %d MiB", fs, written>>20, limit>>20)
			}
		})
	}
}

// BenchmarkStageBlankDisk prints the time to stage (format and mount) a blank
// disk of each size, and how many bytes formatting wrote.
func BenchmarkStageBlankDisk(b *testing.B) {
	for _, fs := range []string{"ext4", "xfs"} {
		for _, size := range []int64{1 << 30, 100 << 30, tib} {
			b.Run(fmt.Sprintf("%s/%dGiB", fs, size>>30), func(b *testing.B) {
				var written int64
				var total time.Duration
				for i := 0; i < b.N; i++ {
					w, took := stageOnce(b, size, fs)
					written += w
					total += took
				}
				b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/stage")
				b.ReportMetric(float64(written>>20)/float64(b.N), "MiB-written/stage")
			})
		}
	}
}

// plainMkfs formats a fresh sparse loop disk of size bytes with mkfs.<fsType>
// and its own defaults (only the quiet and force flags), as a user would by
// hand, and returns how long it took.
func plainMkfs(t testing.TB, size int64, fsType string) time.Duration {
	l := testutil.NewLoop(t, "", size)
	force := "-F"
	if fsType == "xfs" {
		force = "-f"
	}
	start := time.Now()
	if out, err := exec.Command("mkfs."+fsType, "-q", force, l.Path).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.%s: %v\n%s", fsType, err, out)
	}
	return time.Since(start)
}

// BenchmarkStageVsMkfs1TiB prints, per filesystem, the time to stage a
// fresh 1 TiB sparse disk with the driver's defaults (the checks, mkfs and
// the mount) against plain mkfs.<fs> with its own defaults on another fresh
// 1 TiB disk, rounds interleaved, and their ratio (target: stage under 1 s
// per TiB).
func BenchmarkStageVsMkfs1TiB(b *testing.B) {
	for _, fs := range []string{"ext4", "xfs"} {
		b.Run(fs, func(b *testing.B) {
			var stage, plain []time.Duration
			for i := 0; i < b.N; i++ {
				_, took := stageOnce(b, tib, fs)
				stage = append(stage, took)
				plain = append(plain, plainMkfs(b, tib, fs))
			}
			slices.Sort(stage)
			slices.Sort(plain)
			s, p := stage[len(stage)/2], plain[len(plain)/2]
			b.ReportMetric(float64(s.Milliseconds()), "ms-stage")
			b.ReportMetric(float64(p.Milliseconds()), "ms-plain-mkfs")
			b.ReportMetric(s.Seconds()/p.Seconds(), "stage/mkfs")
		})
	}
}
