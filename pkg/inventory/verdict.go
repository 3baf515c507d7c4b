package inventory

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
)

// Capacity is asked often (csi-provisioner polls it for every class) and
// must answer fast, yet count only disks that are blank on the device.
// Reading the signatures runs tools (blkid, wipefs); the other checks are a
// few system calls. So each free disk's last blank probe is kept with the
// device's counters at that time (mounter.DeviceCounters): while the same
// media is behind the device and nothing was written to it, the disk is
// the one it was and still carries nothing new, and Capacity looks only at
// its use (mounts, exclusive claims), with the mount table read once for
// all disks. A verdict older than Config.ProbeMaxAge is probed again in the
// background, for writes the counters cannot show (data still in a
// writer's page cache, commands sent around the block layer). None of this
// decides a hand-out: CreateVolume, mkfs, the raw hand-out and the wipe
// each look at the device in full right before acting.

// blankVerdict is a probe that found a free disk blank.
type blankVerdict struct {
	counters mounter.DeviceCounters // read before the probe
	updated  time.Time              // the disk record's UpdatedAt then
	at       time.Time              // when the probe ran
	pending  bool                   // a background probe is on its way
}

// checkFree is checkBlank for Capacity, with the mounts looked up in
// table: the identity check and the probe are skipped while the disk's
// blank verdict holds (same record, same media, counters unmoved).
func (inv *Inventory) checkFree(ctx context.Context, id, path string, updated time.Time, table *mounter.MountTable) error {
	unlock := inv.lockCheck(id)
	defer unlock()
	c, err := inv.cfg.Mounter.Counters(path)
	if err != nil {
		c = mounter.DeviceCounters{} // cannot tell: check in full
	}
	inv.mu.Lock()
	v := inv.verdicts[id]
	hit := v != nil && v.updated.Equal(updated) && c.Writes != "" && c == v.counters
	stale := hit && !v.pending && time.Since(v.at) > inv.cfg.ProbeMaxAge
	if stale {
		v.pending = true
	}
	inv.mu.Unlock()
	if !hit || c.Media == "" {
		if err := inv.checkIdentity(ctx, id, path); err != nil {
			return err
		}
	}
	if err := inv.checkUnusedIn(path, table); err != nil {
		return err
	}
	if stale {
		inv.reprobe(id, path, updated)
	}
	if hit {
		return nil
	}
	return inv.probeFree(ctx, id, path, updated, c)
}

// probeFree reads the signatures of free disk id and keeps a blank result
// as its verdict. The caller holds the disk's check lock and read c before
// checking the disk, so that any change since moves the counters past the
// verdict.
func (inv *Inventory) probeFree(ctx context.Context, id, path string, updated time.Time, c mounter.DeviceCounters) error {
	inv.mu.Lock()
	delete(inv.verdicts, id)
	inv.mu.Unlock()
	p, err := inv.cfg.Mounter.Probe(ctx, path)
	if err != nil {
		return fmt.Errorf("cannot read the signatures of %s: %w", path, err)
	}
	if len(p.Signatures) > 0 {
		return fmt.Errorf("%w: %s carries %s", ErrForeign, path, strings.Join(p.Signatures, ","))
	}
	if c.Writes != "" {
		inv.mu.Lock()
		inv.verdicts[id] = &blankVerdict{counters: c, updated: updated, at: time.Now()}
		inv.mu.Unlock()
	}
	return nil
}

// reprobe probes free disk id again in the background, in full, and
// settles the result as Capacity does: a disk found carrying data or in
// use is excluded.
func (inv *Inventory) reprobe(id, path string, updated time.Time) {
	inv.cleaner.Add(1)
	go func() {
		defer inv.cleaner.Done()
		err := func() error {
			unlock := inv.lockCheck(id)
			defer unlock()
			c, err := inv.cfg.Mounter.Counters(path)
			if err != nil {
				c = mounter.DeviceCounters{}
			}
			if err := inv.checkPresentUnused(inv.ctx, id, path); err != nil {
				return err
			}
			return inv.probeFree(inv.ctx, id, path, updated, c)
		}()
		inv.mu.Lock()
		defer inv.mu.Unlock()
		if _, serr := inv.settleLocked(id, updated, err); serr != nil {
			klog.ErrorS(serr, "Excluding a disk found in use", "disk", id)
		}
	}()
}

// settleLocked applies the check of free disk id, made while its record
// was last updated at updated: a disk that carries data or is in use is
// excluded, with the reason. It says whether the disk counts as free; a
// disk that changed hands meanwhile does not, and the check is dropped as
// stale. inv.mu must be held.
func (inv *Inventory) settleLocked(id string, updated time.Time, cerr error) (bool, error) {
	d := inv.rec.Disks[id]
	if d == nil || !inv.allocatableLocked(d) || inv.reserved[id] || !d.UpdatedAt.Equal(updated) {
		return false, nil
	}
	if isForeign(cerr) {
		delete(inv.verdicts, id)
		return false, inv.excludeLocked(id, cerr.Error())
	}
	return cerr == nil, nil
}
