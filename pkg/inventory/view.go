package inventory

import (
	"sort"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// StatusMissing is how operators see a managed disk whose device is not
// found now (DiskView.Missing), whatever its record's status.
const StatusMissing = "missing"

// StatusDamaged is how operators see a disk the cloud reports damaged.
const StatusDamaged = "damaged"

// DiskView is one disk as the node knows it now, for operators: every
// managed disk, and every device the source found and the driver refuses
// to use. It is a copy; changing it changes nothing.
type DiskView struct {
	// ID is the disk's stable key; Identity its readable identity.
	ID, Identity string
	// Device is the device path now, or where it was last seen.
	Device string
	// SizeBytes, Media, Category, CloudID and InstanceID describe the disk.
	SizeBytes                            int64
	Media, Category, CloudID, InstanceID string
	// Status is the record's: free, allocated, cleaning, failed or
	// excluded.
	Status string
	// Missing is set for a managed disk (not excluded) whose device is
	// not found now.
	Missing bool
	// Managed is set for a disk in the state record (it can hold a
	// volume); an unmanaged disk is excluded.
	Managed bool
	// Cordoned is set while an operator withdrew the disk.
	Cordoned bool
	// Damaged says why the cloud reports the disk damaged.
	Damaged string
	// Reason explains failed and excluded.
	Reason string
	// Volume is the volume on the disk (allocated, cleaning, failed, and
	// missing with a volume).
	Volume *state.Volume
	// CleanupPolicy and Cleanup are the cleanup under way and its last
	// checkpoint.
	CleanupPolicy string
	Cleanup       *state.CleanupProgress
	// Residual: the disk may still hold an earlier volume's bytes.
	Residual bool
	// UpdatedAt is the last change of the record's status.
	UpdatedAt time.Time
}

// Shown is the status operators see: StatusMissing for a missing disk,
// StatusDamaged for one the cloud reports damaged, else the record's.
func (v DiskView) Shown() string {
	if v.Missing {
		return StatusMissing
	}
	if v.Damaged != "" {
		return StatusDamaged
	}
	return v.Status
}

// CleanupBytes is the progress of an overwriting cleanup (zero, shred) of
// a cleaning or failed disk, over all its passes: from its last
// checkpoint, or none done yet of its passes over the disk. ok is false
// for other policies, which have no progress to tell.
func (v DiskView) CleanupBytes() (done, total int64, ok bool) {
	if v.Status != string(state.Cleaning) && v.Status != string(state.Failed) {
		return 0, 0, false
	}
	if c := v.Cleanup; c != nil && c.TotalBytes() > 0 {
		return c.DoneBytesAll(), c.TotalBytes(), true
	}
	switch p := mounter.CleanupPolicy(v.CleanupPolicy); p {
	case mounter.CleanupZero, mounter.CleanupShred:
		return 0, int64(mounter.Passes(p)) * v.SizeBytes, true
	}
	return 0, 0, false
}

// View lists the node's disks as they are now, sorted by ID; nil before
// the record has loaded.
func (inv *Inventory) View() []DiskView {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if inv.rec == nil {
		return nil
	}
	byID := map[string]DiskView{}
	for id, d := range inv.rec.Disks {
		v := DiskView{ID: id, Identity: d.Identity, Device: d.DevicePath, SizeBytes: d.SizeBytes, Media: d.Media, Category: d.Category,
			CloudID: d.CloudID, InstanceID: d.InstanceID, Status: string(d.Status), Managed: true, Cordoned: inv.rec.Cordoned[id], Damaged: inv.rec.Damaged[id], Reason: d.Reason,
			CleanupPolicy: d.CleanupPolicy, Residual: d.Residual, UpdatedAt: d.UpdatedAt}
		if dev, ok := inv.devices[id]; ok {
			v.Device = dev.Path
		} else if d.Status != state.Excluded {
			v.Missing = true
		}
		if d.Volume != nil {
			vol := *d.Volume
			v.Volume = &vol
		}
		if d.Cleanup != nil {
			c := *d.Cleanup
			v.Cleanup = &c
		}
		byID[id] = v
	}
	for _, e := range inv.excluded {
		if _, managed := byID[e.Disk.ID]; managed {
			continue
		}
		byID[e.Disk.ID] = DiskView{ID: e.Disk.ID, Identity: e.Disk.Identity, Device: e.Disk.Path, SizeBytes: e.Disk.SizeBytes,
			Media: string(e.Disk.Media), Category: e.Disk.Category, CloudID: e.Disk.CloudID, InstanceID: e.Disk.InstanceID, Status: string(state.Excluded),
			Cordoned: inv.rec.Cordoned[e.Disk.ID], Damaged: inv.rec.Damaged[e.Disk.ID], Reason: e.Reason}
	}
	out := make([]DiskView, 0, len(byID))
	for _, v := range byID {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
