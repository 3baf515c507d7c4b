package mounter

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// ErrWrittenSince is returned by Wipe when it resumes a zeroing and finds
// bytes that are not zero in the part its checkpoint says it already
// zeroed: someone wrote to the disk after its cleanup began.
var ErrWrittenSince = errors.New("the disk was written after its cleanup began")

// WipeProgress is how far an overwriting cleanup (CleanupZero,
// CleanupShred) got. Only bytes that were written and synced are counted,
// so a wipe resumed from a WipeProgress leaves no byte unwritten.
type WipeProgress struct {
	// Pass is the pass being written: CleanupShred writes random data in
	// pass 0 and zeroes in pass 1; CleanupZero has pass 0 only.
	Pass int `json:"pass"`
	// Passes is the number of passes of the policy.
	Passes int `json:"passes"`
	// DoneBytes of the current pass, from the device's start, are written.
	DoneBytes int64 `json:"doneBytes"`
	// LengthBytes is how much of the device each pass covers.
	LengthBytes int64 `json:"lengthBytes"`
}

// Done and Total are the bytes written so far and in all, over all passes.
func (p WipeProgress) Done() int64  { return int64(p.Pass)*p.LengthBytes + p.DoneBytes }
func (p WipeProgress) Total() int64 { return int64(p.Passes) * p.LengthBytes }

// WipeOptions tune a Wipe. The zero value wipes the whole device at full
// speed from the start, without checkpoints.
type WipeOptions struct {
	// KeepTailBytes at the device's end are left alone by CleanupZero and
	// CleanupShred (the driver keeps its own record there, see ReservedTail
	// in package disk). The other policies act on the whole device.
	KeepTailBytes int64
	// Resume continues an overwriting cleanup from a checkpoint it
	// reported earlier. A checkpoint that does not fit the policy and the
	// device (other pass count or length) is ignored: the wipe starts over.
	// Before it resumes a zero pass, Wipe reads samples (the first and last
	// MiB and 64 random blocks) of the part already zeroed and fails with
	// ErrWrittenSince if any is not zero; nothing is written then.
	Resume WipeProgress
	// Checkpoint, when set, is called with the progress after the device
	// was synced, at most every CheckpointEvery (and at the end of each
	// pass). An error stops the wipe.
	Checkpoint      func(WipeProgress) error
	CheckpointEvery time.Duration
	// BytesPerSecond caps the write rate of CleanupZero and CleanupShred;
	// 0 is no cap.
	BytesPerSecond int64
}

// overwriteChunk is the largest write (or zero-out) of an overwrite.
const overwriteChunk = 64 << 20

// resumeSamples is how many random blocks a resumed zeroing reads back.
const resumeSamples = 64

// Passes is how many passes over the disk an overwriting cleanup writes:
// two for CleanupShred (random data, then zeroes), else one.
func Passes(policy CleanupPolicy) int {
	if policy == CleanupShred {
		return 2
	}
	return 1
}

// overwrite writes the passes of policy (CleanupZero or CleanupShred) over
// the device's first size-KeepTailBytes bytes, from o.Resume when it fits.
func (r *Real) overwrite(ctx context.Context, device string, policy CleanupPolicy, o WipeOptions) error {
	f, err := openOverwrite(device)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("size of %s: %w", device, err)
	}
	length := size - o.KeepTailBytes
	if o.KeepTailBytes < 0 || length <= 0 {
		return fmt.Errorf("cannot keep the last %d bytes of %s (%d bytes)", o.KeepTailBytes, device, size)
	}
	p := WipeProgress{Passes: Passes(policy), LengthBytes: length}
	if q := o.Resume; q.Passes == p.Passes && q.LengthBytes == length && q.Pass >= 0 && q.Pass < q.Passes &&
		q.DoneBytes >= 0 && q.DoneBytes <= length && q.DoneBytes%512 == 0 {
		p = q
	} else if q != (WipeProgress{}) {
		klog.InfoS("Cleanup checkpoint does not fit the device, starting over", "device", device, "cleanupPolicy", policy,
			"checkpoint", q, "lengthBytes", length)
	}
	if p.Done() > 0 {
		klog.InfoS("Resuming cleanup", "device", device, "cleanupPolicy", policy, "pass", p.Pass, "doneBytes", p.DoneBytes, "lengthBytes", length)
		if p.Pass == p.Passes-1 {
			if err := checkZeroed(device, p.DoneBytes); err != nil {
				return err
			}
		}
	}
	buf, err := alignedBuffer(overwriteChunk)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	w := &overwriter{f: f, device: device, buf: buf, zeroOut: r.zeroOut, o: o, start: time.Now(), lastSync: time.Now()}
	for ; p.Pass < p.Passes; p.Pass, p.DoneBytes = p.Pass+1, 0 {
		random := policy == CleanupShred && p.Pass == 0
		for p.DoneBytes < length {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("cleanup %s of %s stopped at pass %d, byte %d: %w", policy, device, p.Pass, p.DoneBytes, err)
			}
			n := min(w.chunk(), length-p.DoneBytes)
			if err := w.write(p.DoneBytes, n, random); err != nil {
				return err
			}
			p.DoneBytes += n
			if err := w.checkpoint(ctx, p, p.DoneBytes == length); err != nil {
				return err
			}
		}
	}
	return nil
}

// overwriter writes one overwrite's chunks, paces them and reports its
// checkpoints.
type overwriter struct {
	f        *os.File
	device   string
	buf      []byte
	zeroOut  func(f *os.File, off, n int64) error
	o        WipeOptions
	rng      *rand.ChaCha8
	written  int64
	start    time.Time
	lastSync time.Time
}

// chunk is the size of the next write: smaller under a low rate cap, so
// the pace stays even.
func (w *overwriter) chunk() int64 {
	if w.o.BytesPerSecond <= 0 {
		return overwriteChunk
	}
	return min(overwriteChunk, max(1<<20, w.o.BytesPerSecond/4&^(1<<20-1)))
}

// write fills [off, off+n) with random data or zeroes.
func (w *overwriter) write(off, n int64, random bool) error {
	if !random {
		if err := w.zeroOut(w.f, off, n); err == nil {
			return w.pace(n)
		} else if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOTTY) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("zeroing %s at byte %d: %w", w.device, off, err)
		}
		clear(w.buf[:n])
	} else {
		if w.rng == nil {
			var seed [32]byte
			crand.Read(seed[:])
			w.rng = rand.NewChaCha8(seed)
		}
		w.rng.Read(w.buf[:n])
	}
	if _, err := w.f.WriteAt(w.buf[:n], off); err != nil {
		return fmt.Errorf("overwriting %s at byte %d: %w", w.device, off, err)
	}
	return w.pace(n)
}

// pace sleeps as long as the rate cap asks.
func (w *overwriter) pace(n int64) error {
	w.written += n
	if w.o.BytesPerSecond <= 0 {
		return nil
	}
	due := time.Duration(float64(w.written) / float64(w.o.BytesPerSecond) * float64(time.Second))
	if d := due - time.Since(w.start); d > 0 {
		time.Sleep(d)
	}
	return nil
}

// checkpoint syncs the device and reports p when a checkpoint is due.
func (w *overwriter) checkpoint(ctx context.Context, p WipeProgress, endOfPass bool) error {
	if !endOfPass && (w.o.Checkpoint == nil || time.Since(w.lastSync) < w.o.CheckpointEvery) {
		return nil
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", w.device, err)
	}
	w.lastSync = time.Now()
	if w.o.Checkpoint == nil || ctx.Err() != nil {
		return nil
	}
	return w.o.Checkpoint(p)
}

// openOverwrite opens device for writing, exclusively (a mounted or held
// device is refused) and with direct I/O where the device allows it, so a
// multi-TiB wipe does not churn the page cache.
func openOverwrite(device string) (*os.File, error) {
	f, err := os.OpenFile(device, os.O_WRONLY|unix.O_EXCL|unix.O_CLOEXEC|unix.O_DIRECT, 0)
	if errors.Is(err, unix.EINVAL) {
		f, err = os.OpenFile(device, os.O_WRONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	}
	return f, err
}

// alignedBuffer returns n bytes of page-aligned memory, as direct I/O
// needs; unix.Munmap frees it.
func alignedBuffer(n int) ([]byte, error) {
	return unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
}

// blkZeroOut zeroes [off, off+n) of the block device f with the
// BLKZEROOUT ioctl: the device writes the zeroes (or unmaps the range where
// it reads back zeroes), and the kernel writes zero pages where it cannot.
func blkZeroOut(f *os.File, off, n int64) error {
	rng := [2]uint64{uint64(off), uint64(n)}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&rng))); errno != 0 {
		return &os.PathError{Op: "ioctl BLKZEROOUT", Path: f.Name(), Err: errno}
	}
	return nil
}

// checkZeroed reads samples of device's first done bytes, which a zero
// pass already covered, and fails with ErrWrittenSince at the first one
// that is not all zero.
func checkZeroed(device string, done int64) error {
	if done == 0 {
		return nil
	}
	f, err := os.Open(device)
	if err != nil {
		return err
	}
	defer f.Close()
	const block = 4096
	var ranges [][2]int64
	edge := min(done, 1<<20)
	ranges = append(ranges, [2]int64{0, edge}, [2]int64{done - edge, edge})
	for range resumeSamples {
		if done <= block {
			break
		}
		off := rand.Int64N(done/block) * block
		ranges = append(ranges, [2]int64{off, min(block, done-off)})
	}
	buf := make([]byte, 1<<20)
	for _, rg := range ranges {
		b := buf[:rg[1]]
		if _, err := f.ReadAt(b, rg[0]); err != nil {
			return fmt.Errorf("reading back %s at byte %d: %w", device, rg[0], err)
		}
		for i, c := range b {
			if c != 0 {
				return fmt.Errorf("%w: %s has data at byte %d, which its zeroing had already covered", ErrWrittenSince, device, rg[0]+int64(i))
			}
		}
	}
	return nil
}
