package inventory

import (
	"context"
	"errors"
	"fmt"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// Adopt returns the allocated volume with this ID like Lookup, and recovers
// a volume the record does not know from its disk when the disk carries the
// filesystem the driver made for exactly that volume ID: the UUID is
// derived from the ID, so no other volume's filesystem can match. This
// brings volumes back after their state was lost (both copies removed) or
// replaced by an older one, in which their disk showed up as foreign data
// and was left alone. It may save the state: only calls that may change
// state use it.
//
// The device is looked at now, not through what discovery saw, and without
// the inventory lock: its identity and its signatures. ErrNotFound means
// the volume is not on this node; a device that cannot be read is another
// error, so that the caller retries instead of concluding the volume is gone.
func (inv *Inventory) Adopt(ctx context.Context, volumeID string) (Volume, error) {
	inv.mu.Lock()
	if !inv.ready {
		inv.mu.Unlock()
		return Volume{}, ErrNotReady
	}
	v, err := inv.lookupLocked(volumeID)
	dev, candidate := inv.adoptionCandidateLocked(volumeID)
	inv.mu.Unlock()
	if !errors.Is(err, ErrNotFound) || !candidate {
		return v, err
	}
	p, cerr := inv.checkAdoptable(ctx, dev, volumeID)
	if cerr != nil {
		return Volume{}, cerr
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if v, err := inv.lookupLocked(volumeID); !errors.Is(err, ErrNotFound) {
		return v, err // recovered meanwhile by another call
	}
	if r := inv.rec.Disks[dev.ID]; r != nil && r.Status != state.Free && r.Status != state.Excluded {
		return Volume{}, err // the disk went to something else meanwhile
	}
	return inv.adoptLocked(dev, volumeID, p)
}

// adoptionCandidateLocked finds the device a lost volume ID may be on: an
// excluded device of the disk the ID names, which the record gives to no
// volume.
func (inv *Inventory) adoptionCandidateLocked(volumeID string) (disk.Disk, bool) {
	id, err := ParseVolumeID(volumeID)
	if err != nil || id.Node != inv.cfg.Node {
		return disk.Disk{}, false
	}
	if r := inv.rec.Disks[id.Disk]; r != nil && r.Status != state.Free && r.Status != state.Excluded {
		return disk.Disk{}, false // the record gives the disk to something else
	}
	for _, e := range inv.excluded {
		if f := e.Disk.Facts; e.Disk.ID == id.Disk && !f.System && !f.Partitioned && !f.DeviceMapper && len(f.Holders) == 0 {
			return e.Disk, true
		}
	}
	return disk.Disk{}, false
}

// checkAdoptable reads the candidate device now: it must still be the disk,
// and carry exactly the filesystem the driver makes for volumeID. Anything
// else is ErrNotFound; a device that cannot be read is another error.
func (inv *Inventory) checkAdoptable(ctx context.Context, dev disk.Disk, volumeID string) (disk.Probe, error) {
	got, _, err := inv.cfg.Source.Identify(ctx, dev.Path)
	if err != nil {
		return disk.Probe{}, fmt.Errorf("reading the identity of %s, which may hold volume %.160q: %w", dev.Path, volumeID, err)
	}
	if got != dev.ID {
		return disk.Probe{}, fmt.Errorf("%w: %.160q", ErrNotFound, volumeID)
	}
	p, err := inv.cfg.Mounter.Probe(ctx, dev.Path)
	if err != nil {
		return disk.Probe{}, fmt.Errorf("reading the signatures of %s, which may hold volume %.160q: %w", dev.Path, volumeID, err)
	}
	if p.UUID == "" || p.UUID != fsUUID(volumeID) || len(p.Signatures) != 1 || p.FSType == "" {
		return disk.Probe{}, fmt.Errorf("%w: %.160q", ErrNotFound, volumeID)
	}
	return p, nil
}

// adoptLocked records the recovered volume on dev and saves the state.
func (inv *Inventory) adoptLocked(dev disk.Disk, volumeID string, p disk.Probe) (Volume, error) {
	next := inv.rec.Clone()
	now := time.Now().UTC()
	size := dev.SizeBytes - dev.ReservedTailBytes
	next.Disks[dev.ID] = &state.Disk{
		ID: dev.ID, Identity: dev.Identity, SizeBytes: size, Media: string(dev.Media),
		Category: dev.Category, CloudID: dev.CloudID, InstanceID: dev.InstanceID, ReservedTailBytes: dev.ReservedTailBytes,
		DeviceNumber: dev.DevNum, DevicePath: dev.Path, Status: state.Allocated, UpdatedAt: now, Residual: true,
		Volume: &state.Volume{ID: volumeID, CapacityBytes: size,
			Parameters: map[string]string{state.ParamFSType: p.FSType}, FSUUID: p.UUID, CreatedAt: now, Format: state.FormatDone},
	}
	if err := inv.commitLocked(next); err != nil {
		return Volume{}, err
	}
	inv.devices[dev.ID] = dev
	inv.lastPath[dev.ID], inv.lastNum[dev.ID] = dev.Path, dev.DevNum
	for i, e := range inv.excluded {
		if e.Disk.ID == dev.ID {
			inv.excluded = append(inv.excluded[:i:i], inv.excluded[i+1:]...)
			break
		}
	}
	klog.InfoS("Volume recovered from its disk: the filesystem on it is the one the driver made for this volume", "volumeID", volumeID,
		"disk", dev.ID, "device", dev.Path, "identity", dev.Identity, "fsType", p.FSType)
	return inv.volumeLocked(next.Disks[dev.ID]), nil
}
