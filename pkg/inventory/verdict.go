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
// media is behind the device (diskseq) and nothing was written to it, the
// disk is the one it was and still carries nothing new, and Capacity looks
// only at its use (mounts, exclusive claims), with the mount table read
// once for all disks. Where the kernel cannot tell (no diskseq, no I/O
// accounting, I/O in flight) every call probes.
//
// Writes the counters cannot show (data still in a writer's page cache,
// commands sent around the block layer) are found by age: Capacity never
// counts a disk on a verdict older than Config.ProbeMaxAge, and a
// background loop probes again each verdict older than half of that, so
// that Capacity seldom has to. None of this decides a hand-out:
// CreateVolume, mkfs, the raw hand-out and the wipe each look at the
// device in full right before acting.

// blankVerdict is a probe that found a free disk blank.
type blankVerdict struct {
	counters mounter.DeviceCounters // read before the probe
	updated  time.Time              // the disk record's UpdatedAt then
	at       time.Time              // when the probe ran
}

// checkFree is checkBlank for Capacity, with the mounts looked up in
// table (nil: read now): the identity check and the probe are skipped
// while the disk's blank verdict holds (same record, same media, counters
// unmoved) and is at most maxAge old.
func (inv *Inventory) checkFree(ctx context.Context, id, path string, updated time.Time, table *mounter.MountTable, maxAge time.Duration) error {
	unlock := inv.lockCheck(id)
	defer unlock()
	c, err := inv.cfg.Mounter.Counters(path)
	if err != nil {
		c = mounter.DeviceCounters{} // cannot tell: check in full
	}
	inv.mu.Lock()
	v := inv.verdicts[id]
	hit := v != nil && v.updated.Equal(updated) && c.Media != "" && c.Writes != "" && c == v.counters && time.Since(v.at) <= maxAge
	inv.mu.Unlock()
	if !hit {
		if err := inv.checkIdentity(ctx, id, path); err != nil {
			return err
		}
	}
	if err := inv.checkUnusedIn(path, table); err != nil {
		return err
	}
	if hit {
		return nil
	}
	return inv.probeFree(ctx, id, path, updated, c)
}

// probeFree shows free disk id blank, or fails as checkBlankHeld does,
// and keeps a blank result as its verdict. The caller holds the disk's
// check lock and read c before checking the disk, so that any change since
// moves the counters past the verdict.
func (inv *Inventory) probeFree(ctx context.Context, id, path string, updated time.Time, c mounter.DeviceCounters) error {
	inv.mu.Lock()
	delete(inv.verdicts, id)
	inv.mu.Unlock()
	if err := inv.checkNoPartitions(path); err != nil {
		return err
	}
	p, err := inv.cfg.Mounter.Probe(ctx, path)
	if err != nil {
		return fmt.Errorf("cannot read the signatures of %s: %w", path, err)
	}
	if len(p.Signatures) > 0 {
		return fmt.Errorf("%w: %s carries %s", ErrForeign, path, strings.Join(p.Signatures, ","))
	}
	if c.Media != "" && c.Writes != "" {
		inv.mu.Lock()
		inv.verdicts[id] = &blankVerdict{counters: c, updated: updated, at: time.Now()}
		inv.mu.Unlock()
	}
	return nil
}

// keepVerdictsFresh probes again, until the inventory stops, every free
// disk whose verdict is older than half of ProbeMaxAge, and settles the
// result as Capacity does.
func (inv *Inventory) keepVerdictsFresh() {
	defer inv.cleaner.Done()
	t := time.NewTicker(inv.cfg.ProbeMaxAge / 4)
	defer t.Stop()
	for {
		select {
		case <-inv.ctx.Done():
			return
		case <-t.C:
		}
		inv.mu.Lock()
		due := map[string]freeDisk{}
		for id, v := range inv.verdicts {
			d := inv.rec.Disks[id]
			dev, present := inv.devices[id]
			if d != nil && present && time.Since(v.at) > inv.cfg.ProbeMaxAge/2 {
				due[id] = freeDisk{dev.Path, d.UpdatedAt}
			}
		}
		inv.mu.Unlock()
		for id, fd := range due {
			err := inv.checkFree(inv.ctx, id, fd.path, fd.updated, nil, inv.cfg.ProbeMaxAge/2)
			inv.mu.Lock()
			_, serr := inv.settleLocked(id, fd.updated, err)
			inv.mu.Unlock()
			if serr != nil {
				klog.ErrorS(serr, "Excluding a disk found in use failed", "disk", id)
			}
		}
	}
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
	if cerr != nil {
		delete(inv.verdicts, id)
	}
	if isForeign(cerr) {
		return false, inv.excludeLocked(id, cerr.Error())
	}
	return cerr == nil, nil
}
