package mounter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// zeroChunk is the write size of the zeroing fallback.
const zeroChunk = 4 << 20

// Wipe cleans device by policy and checks that no signature is left.
func (r *Real) Wipe(ctx context.Context, device string, policy CleanupPolicy) error {
	start := time.Now()
	// A crash while a volume was published read-only can leave the flag set.
	if err := r.SetDeviceReadOnly(device, false); err != nil {
		return err
	}
	var err error
	switch policy {
	case CleanupSignatures:
		_, err = r.run(ctx, "wipefs", "--all", device)
	case CleanupDiscard:
		if _, err = r.run(ctx, "blkdiscard", device); err == nil {
			_, err = r.run(ctx, "wipefs", "--all", device)
		}
	case CleanupZero:
		if _, zerr := r.run(ctx, "blkdiscard", "--zeroout", device); zerr != nil {
			klog.InfoS("blkdiscard --zeroout unsupported, writing zeroes", "device", device, "err", zerr.Error())
			err = writeZeroes(ctx, device)
		}
	case CleanupShred:
		_, err = r.run(ctx, "shred", "--iterations=1", "--zero", device)
	default:
		return fmt.Errorf("%w: %q", ErrUnknownPolicy, policy)
	}
	if err != nil {
		return err
	}
	p, err := r.Probe(ctx, device)
	if err != nil {
		return err
	}
	if len(p.Signatures) > 0 {
		return fmt.Errorf("%s still carries %s after cleanup %s", device, strings.Join(p.Signatures, ","), policy)
	}
	klog.InfoS("Wiped", "device", device, "cleanupPolicy", policy, "duration", time.Since(start))
	return nil
}

// writeZeroes overwrites the whole device with zeroes and syncs it.
func writeZeroes(ctx context.Context, device string) error {
	f, err := os.OpenFile(device, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, zeroChunk)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := f.Write(buf)
		if errors.Is(err, syscall.ENOSPC) {
			break // reached the end of the device
		}
		if err != nil {
			return fmt.Errorf("zeroing %s: %w", device, err)
		}
		if n < len(buf) {
			break
		}
	}
	return f.Sync()
}
