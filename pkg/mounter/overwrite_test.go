package mounter

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/testutil"
)

// filledLoop returns a loop device of size bytes holding fill everywhere.
func filledLoop(t *testing.T, size int64, fill byte) testutil.Loop {
	l := testutil.NewLoop(t, "", size)
	writeAt(t, l.Path, 0, bytes.Repeat([]byte{fill}, int(size)))
	return l
}

// firstNot returns the offset of the first byte of [off, off+n) on dev that
// is not b, or -1.
func firstNot(t *testing.T, dev string, off, n int64, b byte) int64 {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatal(err)
	}
	for i, c := range buf {
		if c != b {
			return off + int64(i)
		}
	}
	return -1
}

// TestWipeResumes: a zeroing resumed from a checkpoint writes only what
// the checkpoint had not covered (the device's write counter shows it),
// leaves the kept tail alone, and ends with every other byte zero; a
// checkpoint that does not fit the device starts over; a shred resumed in
// its zero pass writes no random pass again.
func TestWipeResumes(t *testing.T) {
	const tail, length = 1 << 20, 32 << 20
	const size = length + tail
	ctx := context.Background()
	r := New()
	cases := []struct {
		name    string
		policy  CleanupPolicy
		resume  WipeProgress
		written int64 // bytes the resumed wipe must write
	}{
		{"zero from the middle", CleanupZero, WipeProgress{Passes: 1, LengthBytes: length, DoneBytes: length / 2}, length / 2},
		{"zero from a checkpoint of another length", CleanupZero, WipeProgress{Passes: 1, LengthBytes: length * 2, DoneBytes: length / 2}, length},
		{"zero from a checkpoint of another policy", CleanupZero, WipeProgress{Passes: 2, LengthBytes: length, DoneBytes: length / 2}, length},
		{"shred in its zero pass", CleanupShred, WipeProgress{Pass: 1, Passes: 2, LengthBytes: length, DoneBytes: length / 4}, length * 3 / 4},
		{"shred in its random pass", CleanupShred, WipeProgress{Pass: 0, Passes: 2, LengthBytes: length, DoneBytes: length / 2}, length * 3 / 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := filledLoop(t, size, 0xaa)
			if c.resume.Pass == c.resume.Passes-1 || c.resume.LengthBytes != length || c.resume.Passes != Passes(c.policy) {
				// What the interrupted zero pass had covered (or, for a
				// checkpoint that does not fit, zeroes that prove nothing).
				writeAt(t, l.Path, 0, make([]byte, c.resume.DoneBytes))
			}
			var points []WipeProgress
			before := testutil.SectorsWritten(t, l.Path)
			err := r.Wipe(ctx, l.Path, c.policy, WipeOptions{KeepTailBytes: tail, Resume: c.resume,
				Checkpoint: func(p WipeProgress) error { points = append(points, p); return nil }})
			if err != nil {
				t.Fatal(err)
			}
			got := (testutil.SectorsWritten(t, l.Path) - before) * 512
			// Wipe also clears the read-only flag and probes: no writes.
			if got != c.written {
				t.Errorf("the resumed wipe wrote %d bytes, want %d", got, c.written)
			}
			if off := firstNot(t, l.Path, 0, length, 0); off >= 0 {
				t.Fatalf("byte %d not zero after the resumed %s", off, c.policy)
			}
			if off := firstNot(t, l.Path, length, tail, 0xaa); off >= 0 {
				t.Fatalf("byte %d of the kept tail changed", off)
			}
			last := points[len(points)-1]
			if last.Pass != last.Passes-1 || last.DoneBytes != length || last.Done() != last.Total() {
				t.Fatalf("last checkpoint %+v is not the end", last)
			}
			for i := 1; i < len(points); i++ {
				if points[i].Done() <= points[i-1].Done() {
					t.Fatalf("checkpoints go back: %+v", points)
				}
			}
		})
	}
}

// TestWipeResumeFindsWritesSince: bytes written into the part a zeroing
// had already covered, while no one was watching, stop the resume before
// anything is written: the disk is not someone else's to erase, and it
// must not be called clean.
func TestWipeResumeFindsWritesSince(t *testing.T) {
	const size = 16 << 20
	ctx := context.Background()
	for _, off := range []int64{0, size/2 - 4096} { // first and last MiB of the zeroed part
		l := filledLoop(t, size, 0xaa)
		writeAt(t, l.Path, 0, make([]byte, size/2))
		writeAt(t, l.Path, off, []byte("someone else's data"))
		before := testutil.SectorsWritten(t, l.Path)
		err := New().Wipe(ctx, l.Path, CleanupZero, WipeOptions{Resume: WipeProgress{Passes: 1, LengthBytes: size, DoneBytes: size / 2}})
		if !errors.Is(err, ErrWrittenSince) || !strings.Contains(err.Error(), strconv.FormatInt(off, 10)) {
			t.Fatalf("resume over data written at %d: %v", off, err)
		}
		if n := testutil.SectorsWritten(t, l.Path) - before; n != 0 {
			t.Fatalf("the refused resume wrote %d sectors", n)
		}
		if got := firstNot(t, l.Path, size/2, size/2, 0xaa); got >= 0 {
			t.Fatalf("the refused resume changed byte %d", got)
		}
	}
}

// TestWipeCheckpointsAndStops: with CheckpointEvery 0 every chunk is a
// checkpoint; a checkpoint that fails, or a cancelled context, stops the
// wipe where it is.
func TestWipeCheckpointsAndStops(t *testing.T) {
	const size = 3*overwriteChunk + 1<<20 // the last chunk is short
	ctx := context.Background()
	l := filledLoop(t, size, 0xaa)
	var points []int64
	err := New().Wipe(ctx, l.Path, CleanupZero, WipeOptions{Checkpoint: func(p WipeProgress) error {
		points = append(points, p.DoneBytes)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{overwriteChunk, 2 * overwriteChunk, 3 * overwriteChunk, size}
	if len(points) != len(want) || points[0] != want[0] || points[3] != want[3] {
		t.Fatalf("checkpoints %v, want %v", points, want)
	}

	l = filledLoop(t, size, 0xaa)
	stop := errors.New("state cannot be saved")
	err = New().Wipe(ctx, l.Path, CleanupZero, WipeOptions{Checkpoint: func(p WipeProgress) error { return stop }})
	if !errors.Is(err, stop) {
		t.Fatalf("failed checkpoint: %v", err)
	}
	if off := firstNot(t, l.Path, overwriteChunk, size-overwriteChunk, 0xaa); off >= 0 {
		t.Fatalf("the wipe went on past its failed checkpoint: byte %d changed", off)
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := New().Wipe(cctx, l.Path, CleanupShred, WipeOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wipe: %v", err)
	}
}

// TestWipeWritesZeroesWhereTheDeviceCannot: a device that refuses
// BLKZEROOUT gets zeroes written, the last short chunk included.
func TestWipeWritesZeroesWhereTheDeviceCannot(t *testing.T) {
	const size = overwriteChunk + 4096
	l := filledLoop(t, size, 0xaa)
	r := New()
	refused := 0
	r.zeroOut = func(*os.File, int64, int64) error { refused++; return unix.EOPNOTSUPP }
	if err := r.Wipe(context.Background(), l.Path, CleanupZero, WipeOptions{}); err != nil {
		t.Fatal(err)
	}
	if refused != 2 {
		t.Fatalf("zero-out tried %d times, want 2", refused)
	}
	if off := firstNot(t, l.Path, 0, size, 0); off >= 0 {
		t.Fatalf("byte %d not zero", off)
	}
	// Any other failure of the device is the wipe's failure.
	r.zeroOut = func(*os.File, int64, int64) error { return unix.EIO }
	if err := r.Wipe(context.Background(), l.Path, CleanupZero, WipeOptions{}); !errors.Is(err, unix.EIO) {
		t.Fatalf("zero-out failing with EIO: %v", err)
	}
}

// TestWipeRateCap: a capped wipe takes at least as long as its cap asks.
func TestWipeRateCap(t *testing.T) {
	const size, rate = 8 << 20, 16 << 20
	l := filledLoop(t, size, 0xaa)
	start := time.Now()
	if err := New().Wipe(context.Background(), l.Path, CleanupZero, WipeOptions{BytesPerSecond: rate}); err != nil {
		t.Fatal(err)
	}
	if d, floor := time.Since(start), time.Second*size/rate; d < floor {
		t.Fatalf("8 MiB at 16 MiB/s took %v, less than %v", d, floor)
	}
	if off := firstNot(t, l.Path, 0, size, 0); off >= 0 {
		t.Fatalf("byte %d not zero", off)
	}
}
