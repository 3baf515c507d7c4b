package inventory

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// The record is the driver's belief about a disk, not the truth: someone
// may have written to the disk, mounted it or bound its device node since.
// The checks in this file look at the device itself, and every act that
// destroys or exposes data (allocate, hand out raw, mkfs, wipe) runs them
// right before acting, in the one function that owns the act.

// checkIdentity fails with ErrIdentityMismatch unless the device at path is
// disk id now.
func (inv *Inventory) checkIdentity(ctx context.Context, id, path string) error {
	got, identity, err := inv.cfg.Source.Identify(ctx, path)
	if err != nil {
		return fmt.Errorf("%w: reading the identity of %s: %v", ErrIdentityMismatch, path, err)
	}
	if got != id {
		return fmt.Errorf("%w: %s is %s, not disk %s", ErrIdentityMismatch, path, identity, id)
	}
	return nil
}

// checkUnused fails with ErrInUse while the device at path is in use by
// anyone: a filesystem of it mounted, its device node bind-mounted (how the
// kubelet publishes a raw block volume, this driver's or another's), or an
// exclusive claim on it (holders such as device-mapper, md or LVM, or
// another exclusive opener).
func (inv *Inventory) checkUnused(path string) error {
	return inv.checkUnusedIn(path, nil)
}

// checkUnusedIn is checkUnused with the mounts looked up in table, read
// once for many devices; nil reads the mount table now.
func (inv *Inventory) checkUnusedIn(path string, table *mounter.MountTable) error {
	mounts, err := inv.mountsIn(path, table)
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("%w: %s is mounted at %s", ErrInUse, path, strings.Join(mounts, ", "))
	}
	if err := inv.cfg.Mounter.CheckUnclaimed(path); errors.Is(err, syscall.EBUSY) {
		return fmt.Errorf("%w: %v", ErrInUse, err)
	} else if err != nil {
		return err
	}
	return nil
}

// checkPresentUnused fails unless the device at path is disk id
// (ErrIdentityMismatch) and unused (ErrInUse).
func (inv *Inventory) checkPresentUnused(ctx context.Context, id, path string) error {
	if err := inv.checkIdentity(ctx, id, path); err != nil {
		return err
	}
	return inv.checkUnused(path)
}

// inspect looks at the device at path right before an act: it must be disk
// id (ErrIdentityMismatch) and unused (ErrInUse); it returns what a probe
// finds on it. A probe that fails is a plain error: the device is shown
// neither blank nor foreign, so it is neither given out nor excluded for a
// tool that failed once.
func (inv *Inventory) inspect(ctx context.Context, id, path string) (disk.Probe, error) {
	if err := inv.checkPresentUnused(ctx, id, path); err != nil {
		return disk.Probe{}, err
	}
	p, err := inv.cfg.Mounter.Probe(ctx, path)
	if err != nil {
		return disk.Probe{}, fmt.Errorf("cannot read the signatures of %s: %w", path, err)
	}
	return p, nil
}

// checkBlank fails unless the device at path is disk id, unused and
// carries no signature: ErrIdentityMismatch, ErrInUse or ErrForeign. Checks
// of one disk run one at a time: two exclusive opens at once would each see
// the other as a user of the disk.
func (inv *Inventory) checkBlank(ctx context.Context, id, path string) error {
	unlock := inv.lockCheck(id)
	defer unlock()
	return inv.checkBlankHeld(ctx, id, path)
}

// checkBlankHeld is checkBlank for a caller that holds the disk's check
// lock (and acts on the disk before it lets go).
func (inv *Inventory) checkBlankHeld(ctx context.Context, id, path string) error {
	if err := inv.checkNoPartitions(path); err != nil {
		return err
	}
	p, err := inv.inspect(ctx, id, path)
	if err != nil {
		return err
	}
	if len(p.Signatures) > 0 {
		return fmt.Errorf("%w: %s carries %s", ErrForeign, path, strings.Join(p.Signatures, ","))
	}
	return nil
}

// checkNoPartitions fails with ErrInUse while the kernel has partitions of
// the device at path: a blank disk has none, and one added to the kernel
// alone can hold a filesystem that a probe of the whole disk misses.
func (inv *Inventory) checkNoPartitions(path string) error {
	parts, err := inv.cfg.Mounter.Partitions(path)
	if err != nil {
		return err
	}
	if len(parts) > 0 {
		return fmt.Errorf("%w: %s has partitions %s", ErrInUse, path, strings.Join(parts, ", "))
	}
	return nil
}

// ownContent says whether everything a probe found on a volume's disk is
// the driver's own to erase, and if not, what the disk holds instead. Own
// is: nothing at all; anything, once the disk was handed to a pod raw (the
// pod wrote it); a partial filesystem of a mkfs the driver recorded as
// started; or exactly the filesystem whose UUID the driver derived from
// the volume ID.
func ownContent(v *state.Volume, p disk.Probe) (bool, string) {
	switch {
	case len(p.Signatures) == 0:
		return true, ""
	case v == nil:
		return false, "carries " + strings.Join(p.Signatures, ",") + " and no volume of the driver's was on it"
	case v.RawExposed:
		return true, ""
	case v.Format == state.FormatStarted && partialOwn(v, p):
		return true, ""
	case len(p.Signatures) == 1 && p.FSType != "" && p.UUID == v.FSUUID:
		return true, ""
	case p.UUID != "":
		return false, fmt.Sprintf("carries %s with UUID %s, not the filesystem %s the driver made for volume %s",
			strings.Join(p.Signatures, ","), p.UUID, v.FSUUID, v.ID)
	}
	return false, fmt.Sprintf("carries %s, which the driver did not put there for volume %s", strings.Join(p.Signatures, ","), v.ID)
}

// wipeOwn is the one owner of wiping a disk: the cleaner, the wipe before a
// re-made mkfs and the zeroing before a raw hand-out all come here. Right
// before the wipe it checks the device itself: disk id at path, unused, and
// holding only what ownContent calls vol's own. Content that is not is
// ErrForeign with the reason, and nothing is erased; so are bytes found
// written into the part a resumed zeroing had already covered. The caller
// holds the disk's check lock.
func (inv *Inventory) wipeOwn(ctx context.Context, id, path string, vol *state.Volume, policy mounter.CleanupPolicy, o mounter.WipeOptions) error {
	p, err := inv.inspect(ctx, id, path)
	if err != nil {
		return err
	}
	if own, why := ownContent(vol, p); !own {
		return fmt.Errorf("%w: %s", ErrForeign, why)
	}
	start := time.Now()
	klog.InfoS("Wiping disk", "disk", id, "device", path, "cleanupPolicy", policy)
	if err := inv.cfg.Mounter.Wipe(ctx, path, policy, o); errors.Is(err, mounter.ErrWrittenSince) {
		return fmt.Errorf("%w: %v", ErrForeign, err)
	} else if err != nil {
		return fmt.Errorf("cleanup %s of %s: %w", policy, path, err)
	}
	klog.InfoS("Disk wiped", "disk", id, "device", path, "cleanupPolicy", policy, "duration", time.Since(start))
	return nil
}

// excludeLocked records that disk id holds content or a use the driver does
// not own: it becomes Excluded with reason, leaves capacity, and nothing on
// it is ever erased. inv.mu must be held.
func (inv *Inventory) excludeLocked(id, reason string) error {
	next := inv.rec.Clone()
	d := next.Disks[id]
	if d == nil {
		return nil
	}
	if d.Volume != nil && d.Status == state.Allocated {
		return fmt.Errorf("disk %s holds volume %s and cannot be excluded", id, d.Volume.ID)
	}
	prev := d.Status
	if d.Volume != nil {
		d.Residual = true
	}
	d.Status, d.Reason, d.Volume, d.CleanupPolicy, d.Cleanup, d.UpdatedAt = state.Excluded, reason, nil, "", nil, time.Now().UTC()
	if err := inv.commitLocked(next); err != nil {
		return err
	}
	if dev, ok := inv.devices[id]; ok {
		inv.excluded = append(inv.excluded, Excluded{Disk: dev, Reason: reason})
	}
	klog.ErrorS(nil, "Disk excluded: it holds something the driver did not put there; nothing on it is erased, and it is out of capacity until an operator clears it",
		"disk", id, "device", inv.devices[id].Path, "previousStatus", prev, "reason", reason)
	return nil
}

// isForeign says whether err means the device holds or is used by
// something that is not the driver's.
func isForeign(err error) bool {
	return errors.Is(err, ErrForeign) || errors.Is(err, ErrInUse)
}

// lockCheck serialises the device checks of disk id and returns the unlock.
func (inv *Inventory) lockCheck(id string) func() {
	inv.mu.Lock()
	l := inv.checks[id]
	if l == nil {
		l = &sync.Mutex{}
		inv.checks[id] = l
	}
	inv.mu.Unlock()
	l.Lock()
	return l.Unlock
}
