package inventory

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// startCleanerLocked starts the background cleaner of one disk unless one is
// already running. inv.mu must be held.
func (inv *Inventory) startCleanerLocked(id string) {
	if inv.active[id] || inv.stopped {
		return
	}
	inv.active[id] = true
	inv.cleaner.Add(1)
	go func() {
		defer inv.cleaner.Done()
		defer func() {
			inv.mu.Lock()
			delete(inv.active, id)
			inv.mu.Unlock()
		}()
		inv.cleanUntilDone(id)
	}()
}

// cleanUntilDone wipes the disk, retrying after RetryInterval while it fails,
// until it is free or the inventory stops.
func (inv *Inventory) cleanUntilDone(id string) {
	for {
		err := inv.cleanOnce(id)
		if err == nil {
			return
		}
		if inv.ctx.Err() != nil {
			return
		}
		if !inv.setStatus(id, state.Failed, err.Error()) {
			return
		}
		inv.reportCleanupFailed(id, err)
		klog.ErrorS(err, "Disk cleanup failed, disk excluded from capacity until a retry succeeds", "disk", id, "retryIn", inv.cfg.RetryInterval)
		select {
		case <-inv.ctx.Done():
			return
		case <-time.After(inv.cfg.RetryInterval):
		}
	}
}

// cleanOnce wipes the disk once; nil means the disk is free, excluded, or
// no longer being cleaned. Right before the wipe it checks the device
// itself: it must be the same disk, unused, and hold only what the driver
// can show is the deleted volume's own (see ownContent). Anything else
// excludes the disk, and nothing on it is erased.
func (inv *Inventory) cleanOnce(id string) error {
	inv.mu.Lock()
	d := inv.rec.Disks[id]
	if d == nil || (d.Status != state.Cleaning && d.Status != state.Failed) {
		inv.mu.Unlock()
		return nil // no longer being cleaned: nothing left to do
	}
	policy := mounter.CleanupPolicy(d.CleanupPolicy)
	if policy == "" {
		policy = mounter.CleanupSignatures
	}
	var vol *state.Volume
	if d.Volume != nil {
		v := *d.Volume
		vol = &v
	}
	opts := mounter.WipeOptions{KeepTailBytes: d.ReservedTailBytes, CheckpointEvery: inv.cfg.CleanupCheckpointEvery,
		BytesPerSecond: inv.cfg.CleanupBytesPerSecond, Checkpoint: func(p mounter.WipeProgress) error { return inv.saveProgress(id, p) }}
	if c := d.Cleanup; c != nil {
		opts.Resume = mounter.WipeProgress{Pass: c.Pass, Passes: c.Passes, DoneBytes: c.DoneBytes, LengthBytes: c.LengthBytes}
	}
	path := inv.devices[id].Path
	inv.mu.Unlock()

	ctx := inv.ctx
	path, err := inv.currentPath(ctx, id, path)
	if err != nil {
		return err
	}
	unlock := inv.lockCheck(id)
	defer unlock()
	start := time.Now()
	if err := inv.wipeOwn(ctx, id, path, vol, policy, opts); errors.Is(err, ErrForeign) {
		return inv.excludeCleaning(id, err.Error())
	} else if err != nil {
		return err
	}
	if r, ok := inv.cfg.Source.(afterWiper); ok {
		inv.mu.Lock()
		identity := inv.rec.Disks[id].Identity
		inv.mu.Unlock()
		if err := r.AfterWipe(ctx, path, identity); err != nil {
			return fmt.Errorf("restoring the identity of %s after cleanup: %w", path, err)
		}
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	next := inv.rec.Clone()
	nd := next.Disks[id]
	if nd == nil || (nd.Status != state.Cleaning && nd.Status != state.Failed) {
		return nil // no longer being cleaned: nothing left to do
	}
	nd.Residual = residualAfter(policy, nd.Residual, vol)
	nd.Status, nd.Volume, nd.CleanupPolicy, nd.Cleanup, nd.Reason, nd.UpdatedAt = state.Free, nil, "", nil, "", time.Now().UTC()
	if err := inv.commitLocked(next); err != nil {
		return err
	}
	klog.InfoS("Disk clean and free", "disk", id, "device", path, "cleanupPolicy", policy, "residual", nd.Residual, "duration", time.Since(start))
	return nil
}

// residualAfter says whether a disk may still hold a previous volume's
// bytes after a cleanup with policy: zero and shred (which ends with zeroes)
// leave none; signatures and discard may (not every device reads zeroes
// after a discard) once a volume wrote to the disk.
func residualAfter(policy mounter.CleanupPolicy, before bool, vol *state.Volume) bool {
	switch policy {
	case mounter.CleanupZero, mounter.CleanupShred:
		return false
	}
	written := vol != nil && (vol.RawExposed || vol.Format != state.FormatNone)
	return before || written
}

// currentPath returns the device path of disk id now, checking the identity
// of the device at the last known path and rediscovering when it changed.
func (inv *Inventory) currentPath(ctx context.Context, id, path string) (string, error) {
	if path != "" && inv.checkIdentity(ctx, id, path) == nil {
		return path, nil
	}
	path, err := inv.rediscover(ctx, id)
	if err != nil {
		return "", err
	}
	if path == "" {
		return "", fmt.Errorf("%w: disk %s", ErrDeviceMissing, id)
	}
	return path, nil
}

// excludeCleaning excludes a disk whose cleanup found content that is not
// the deleted volume's, if the disk is still being cleaned.
func (inv *Inventory) excludeCleaning(id, reason string) error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if d := inv.rec.Disks[id]; d == nil || (d.Status != state.Cleaning && d.Status != state.Failed) {
		return nil
	}
	return inv.excludeLocked(id, reason)
}

// afterWiper is a source that keeps something on its disks (a pin) that a
// wipe erases and must be written back before the disk is free.
type afterWiper interface {
	AfterWipe(ctx context.Context, path, identity string) error
}

// reportCleanupFailed tells the observer of a failed cleanup of disk id.
func (inv *Inventory) reportCleanupFailed(id string, err error) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if d := inv.rec.Disks[id]; d != nil {
		inv.cfg.Observer.CleanupFailed(*d, err)
	}
}

// errNotCleaning stops a wipe whose disk is no longer being cleaned.
var errNotCleaning = errors.New("the disk is no longer being cleaned")

// saveProgress records a checkpoint of disk id's cleanup in the state. A
// checkpoint that cannot be saved stops the wipe: it goes on (from the last
// saved checkpoint) when the cleanup is retried.
func (inv *Inventory) saveProgress(id string, p mounter.WipeProgress) error {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	d := inv.rec.Disks[id]
	if d == nil || (d.Status != state.Cleaning && d.Status != state.Failed) {
		return errNotCleaning
	}
	next := inv.rec.Clone()
	next.Disks[id].Cleanup = &state.CleanupProgress{Pass: p.Pass, Passes: p.Passes, DoneBytes: p.DoneBytes, LengthBytes: p.LengthBytes, At: time.Now().UTC()}
	return inv.commitLocked(next)
}

// setStatus records a cleaning failure; it reports false when the disk is no
// longer being cleaned.
func (inv *Inventory) setStatus(id string, s state.Status, reason string) bool {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	d := inv.rec.Disks[id]
	if d == nil || (d.Status != state.Cleaning && d.Status != state.Failed) {
		return false
	}
	next := inv.rec.Clone()
	nd := next.Disks[id]
	if nd.Status != s {
		nd.UpdatedAt = time.Now().UTC()
	}
	nd.Status, nd.Reason = s, reason
	if err := inv.commitLocked(next); err != nil {
		klog.ErrorS(err, "Saving node state", "disk", id)
	}
	return true
}

// WaitIdle blocks until no cleaner is running or ctx ends; for tests and
// orderly shutdown.
func (inv *Inventory) WaitIdle(ctx context.Context) error {
	for {
		inv.mu.Lock()
		n := len(inv.active)
		inv.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
