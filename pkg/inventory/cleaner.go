package inventory

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// startCleanerLocked starts the background cleaner of one disk unless one is
// already running. inv.mu must be held.
func (inv *Inventory) startCleanerLocked(id string) {
	if inv.active[id] {
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
		klog.ErrorS(err, "Disk cleanup failed, disk excluded from capacity until a retry succeeds", "disk", id, "retryIn", inv.cfg.RetryInterval)
		select {
		case <-inv.ctx.Done():
			return
		case <-time.After(inv.cfg.RetryInterval):
		}
	}
}

// cleanOnce wipes the disk once; nil means the disk is free or no longer
// being cleaned.
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
	path := inv.devices[id].Path
	inv.mu.Unlock()

	ctx := inv.ctx
	if path != "" {
		if got, _, err := inv.cfg.Source.Identify(ctx, path); err != nil || got != id {
			path = ""
		}
	}
	if path == "" {
		var err error
		if path, err = inv.rediscover(ctx, id); err != nil {
			return err
		}
		if path == "" {
			return fmt.Errorf("%w: disk %s", ErrDeviceMissing, id)
		}
	}
	mounts, err := inv.mountsOf(path)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("%w: %s is mounted at %s", ErrInUse, path, strings.Join(mounts, ", "))
	}
	start := time.Now()
	klog.InfoS("Cleaning disk", "disk", id, "device", path, "cleanupPolicy", policy)
	if err := inv.cfg.Mounter.Wipe(ctx, path, policy); err != nil {
		return fmt.Errorf("cleanup %s of %s: %w", policy, path, err)
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
	nd.Status, nd.Volume, nd.CleanupPolicy, nd.Reason, nd.UpdatedAt = state.Free, nil, "", "", time.Now().UTC()
	if err := inv.commitLocked(next); err != nil {
		return err
	}
	klog.InfoS("Disk clean and free", "disk", id, "device", path, "cleanupPolicy", policy, "duration", time.Since(start))
	return nil
}

// afterWiper is a source that keeps something on its disks (a pin) that a
// wipe erases and must be written back before the disk is free.
type afterWiper interface {
	AfterWipe(ctx context.Context, path, identity string) error
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
	nd.Status, nd.Reason, nd.UpdatedAt = s, reason, time.Now().UTC()
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
