package inventory

import (
	"context"
	"errors"
	"time"

	"k8s.io/klog/v2"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// lookupOrAdoptLocked is lookupLocked, except that a volume the record does
// not know is recovered from its disk when the disk carries the filesystem
// the driver made for exactly that volume ID: the UUID is derived from the
// ID, so no other volume's filesystem can match. This brings volumes back
// after their state was lost (both copies removed) or replaced by an older
// one, in which their disk showed up as foreign data and was left alone.
//
// The device is looked at now, not through what discovery saw: its identity
// and its signatures. It runs with inv.mu held, from calls that may change
// state only.
func (inv *Inventory) lookupOrAdoptLocked(ctx context.Context, volumeID string) (Volume, error) {
	v, err := inv.lookupLocked(volumeID)
	if !errors.Is(err, ErrNotFound) {
		return v, err
	}
	id, perr := ParseVolumeID(volumeID)
	if perr != nil || id.Node != inv.cfg.Node {
		return v, err
	}
	if r := inv.rec.Disks[id.Disk]; r != nil && r.Status != state.Free && r.Status != state.Excluded {
		return v, err // the record gives the disk to something else
	}
	i := -1
	for j, e := range inv.excluded {
		if e.Disk.ID == id.Disk {
			i = j
		}
	}
	if i < 0 {
		return v, err
	}
	dev := inv.excluded[i].Disk
	f := dev.Facts
	if f.System || f.Partitioned || f.DeviceMapper || len(f.Holders) > 0 || inv.checkIdentity(ctx, dev.ID, dev.Path) != nil {
		return v, err
	}
	p, perr := inv.cfg.Mounter.Probe(ctx, dev.Path)
	if perr != nil || p.UUID == "" || p.UUID != fsUUID(volumeID) || len(p.Signatures) != 1 || p.FSType == "" {
		return v, err
	}
	next := inv.rec.Clone()
	now := time.Now().UTC()
	next.Disks[dev.ID] = &state.Disk{
		ID: dev.ID, Identity: dev.Identity, SizeBytes: dev.SizeBytes - dev.ReservedTailBytes, Media: string(dev.Media),
		Category: dev.Category, CloudID: dev.CloudID, ReservedTailBytes: dev.ReservedTailBytes,
		Status: state.Allocated, UpdatedAt: now,
		Volume: &state.Volume{ID: volumeID, CapacityBytes: dev.SizeBytes - dev.ReservedTailBytes,
			Parameters: map[string]string{state.ParamFSType: p.FSType}, FSUUID: p.UUID, CreatedAt: now, Format: state.FormatDone},
	}
	if cerr := inv.commitLocked(next); cerr != nil {
		return Volume{}, cerr
	}
	inv.devices[dev.ID] = dev
	inv.lastPath[dev.ID] = dev.Path
	inv.excluded = append(inv.excluded[:i:i], inv.excluded[i+1:]...)
	klog.InfoS("Volume recovered from its disk: the filesystem on it is the one the driver made for this volume", "volumeID", volumeID,
		"disk", dev.ID, "device", dev.Path, "identity", dev.Identity, "fsType", p.FSType)
	return inv.volumeLocked(next.Disks[dev.ID]), nil
}
