package mounter

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// maxKeptTail bounds how much of a device's end Format keeps as it was.
const maxKeptTail = 4 << 20

// keepTail saves the bytes of device beyond sizeBytes (at most its last
// maxKeptTail bytes) and returns a function that writes back whatever of
// them changed, then syncs. mkfs.xfs zeroes the last 128 KiB of a device
// whatever its "-d size", which would erase what the driver keeps there.
func keepTail(device string, sizeBytes int64) (restore func() error, err error) {
	f, err := os.Open(device)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("size of %s: %w", device, err)
	}
	start := max(sizeBytes, end-maxKeptTail)
	if start >= end {
		return func() error { return nil }, nil
	}
	saved := make([]byte, end-start)
	if _, err := f.ReadAt(saved, start); err != nil {
		return nil, fmt.Errorf("reading the tail of %s: %w", device, err)
	}
	return func() error {
		f, err := os.OpenFile(device, os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		now := make([]byte, len(saved))
		if _, err := f.ReadAt(now, start); err != nil {
			return fmt.Errorf("reading the tail of %s: %w", device, err)
		}
		if bytes.Equal(now, saved) {
			return nil
		}
		if _, err := f.WriteAt(saved, start); err != nil {
			return fmt.Errorf("restoring the tail of %s: %w", device, err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("restoring the tail of %s: %w", device, err)
		}
		klog.InfoS("Restored the device's tail beyond the filesystem", "device", device, "offset", start, "bytes", len(saved))
		return nil
	}, nil
}
