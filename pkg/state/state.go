// Package state keeps the node's record of which volume owns which disk and
// where each disk is in its lifecycle. The record is one small JSON file written
// crash-safely: a reader after any crash sees either the old or the new record,
// never a mix.
package state

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/internal/crashpoint"
)

// FormatVersion is the version of the record's layout.
const FormatVersion = 1

// Status is where a disk is in its lifecycle.
type Status string

const (
	// Free disks are blank and may be allocated.
	Free Status = "free"
	// Allocated disks belong to exactly one volume.
	Allocated Status = "allocated"
	// Cleaning disks are being wiped after their volume was deleted.
	Cleaning Status = "cleaning"
	// Failed disks could not be cleaned; they are retried and never allocated.
	Failed Status = "failed"
	// Excluded disks hold data the driver cannot show is its own, or are in
	// use by something else; Reason says which. They are never allocated,
	// formatted or wiped. An excluded disk found blank and unused again (an
	// operator cleared it) becomes free.
	Excluded Status = "excluded"
)

// Volume is what the node remembers of a volume living on a disk.
type Volume struct {
	// ID is the CSI volume ID.
	ID string `json:"id"`
	// Name is the CreateVolume name, kept so that a retry gets the same disk.
	Name string `json:"name"`
	// PV, ClaimNamespace and ClaimName are the Kubernetes objects the
	// volume was created for, when the provisioner said so
	// (--extra-create-metadata); for operators only.
	PV             string `json:"pv,omitempty"`
	ClaimNamespace string `json:"claimNamespace,omitempty"`
	ClaimName      string `json:"claimName,omitempty"`
	// CapacityBytes is the size reported to the CO (the whole disk).
	CapacityBytes int64 `json:"capacityBytes"`
	// Parameters are the validated StorageClass parameters the volume was
	// created with; the filesystem type is under ParamFSType.
	Parameters map[string]string `json:"parameters,omitempty"`
	// FSUUID is the UUID the driver gives the filesystem it creates for this
	// volume, so the driver can recognise its own filesystem on the device.
	FSUUID string `json:"fsUUID"`
	// CreatedAt is when the disk was allocated.
	CreatedAt time.Time `json:"createdAt"`
	// Format is how far the driver got making the volume's filesystem.
	Format Format `json:"format,omitempty"`
	// RawExposed is set, before the device is first handed to a pod as a
	// raw block device, for the rest of the volume's life: from then on,
	// whatever the disk holds was written through the volume and is the
	// volume's to erase.
	RawExposed bool `json:"rawExposed,omitempty"`
	// Abnormal, when set, says why the volume cannot be served (its
	// filesystem is gone from its disk); the volume condition reports it.
	Abnormal string `json:"abnormal,omitempty"`
	// Lost, when set, says why the volume's data is gone: the driver
	// formatted its disk, and the disk now reads blank.
	Lost string `json:"lost,omitempty"`
}

// ParamFSType is the key of the filesystem type in Volume.Parameters.
const ParamFSType = "fsType"

// Format is how far the driver got making a volume's filesystem.
type Format string

const (
	// FormatNone: no filesystem made yet (or a raw block volume).
	FormatNone Format = ""
	// FormatStarted: mkfs was started and may not have finished; the disk
	// was never mounted, so it holds at most a partial filesystem of the
	// driver's and no data of the volume's user.
	FormatStarted Format = "started"
	// FormatDone: the filesystem is complete; it is never made again.
	FormatDone Format = "done"
)

// Disk is the record of one disk the driver manages.
type Disk struct {
	// ID is the disk's stable key (see disk.Disk.ID).
	ID string `json:"id"`
	// Identity is the human-readable identity (serial, WWN, backing file).
	Identity string `json:"identity"`
	// SizeBytes, Media and Category are the last values seen on the device.
	SizeBytes int64  `json:"sizeBytes"`
	Media     string `json:"media"`
	Category  string `json:"category,omitempty"`
	// CloudID is the cloud's ID of the disk (an ECS disk ID), when known.
	CloudID string `json:"cloudID,omitempty"`
	// InstanceID is the cloud instance the disk belongs to, when known.
	InstanceID string `json:"instanceID,omitempty"`
	// ReservedTailBytes at the device's end are the driver's (see
	// disk.Disk); SizeBytes already leaves them out.
	ReservedTailBytes int64 `json:"reservedTailBytes,omitempty"`
	// DeviceNumber ("MAJ:MIN") and DevicePath are where the disk was last
	// seen: a volume's mounts can still be told as its own once the disk is
	// gone, also after a restart.
	DeviceNumber string `json:"deviceNumber,omitempty"`
	DevicePath   string `json:"devicePath,omitempty"`
	// Status is the lifecycle state.
	Status Status `json:"status"`
	// Volume is set while Status is Allocated or Cleaning.
	Volume *Volume `json:"volume,omitempty"`
	// CleanupPolicy is the policy being applied while Cleaning or Failed.
	CleanupPolicy string `json:"cleanupPolicy,omitempty"`
	// Cleanup is how far an overwriting cleanup (zero, shred) got at its
	// last checkpoint, while Cleaning or Failed; a restarted cleanup goes
	// on from there.
	Cleanup *CleanupProgress `json:"cleanup,omitempty"`
	// Reason explains a Failed or Excluded status (or the last cleaning
	// error).
	Reason string `json:"reason,omitempty"`
	// Residual is set while the disk may still hold bytes a previous
	// volume wrote: its cleanup erased signatures only. Such a disk is
	// never handed out raw until it is zeroed; a new filesystem on it
	// exposes none of the old bytes.
	Residual bool `json:"residual,omitempty"`
	// UpdatedAt is the time of the last change of Status.
	UpdatedAt time.Time `json:"updatedAt"`
}

// CleanupProgress is a checkpoint of an overwriting cleanup: every byte
// before it was written and synced.
type CleanupProgress struct {
	// Pass is the pass being written, of Passes (shred: random data, then
	// zeroes; zero: zeroes only).
	Pass   int `json:"pass"`
	Passes int `json:"passes"`
	// DoneBytes of the pass are written, of LengthBytes.
	DoneBytes   int64 `json:"doneBytes"`
	LengthBytes int64 `json:"lengthBytes"`
	// At is when the checkpoint was taken.
	At time.Time `json:"at"`
}

// DoneBytesAll and TotalBytes count over all passes.
func (p CleanupProgress) DoneBytesAll() int64 { return int64(p.Pass)*p.LengthBytes + p.DoneBytes }
func (p CleanupProgress) TotalBytes() int64   { return int64(p.Passes) * p.LengthBytes }

// Record is the whole node state.
type Record struct {
	Version int `json:"version"`
	// Generation counts the saves of the record; Store.Save sets it. Of two
	// copies, the one with the higher generation is the newer.
	Generation uint64 `json:"generation"`
	// Node is the node ID the record belongs to.
	Node string `json:"node"`
	// Disks maps disk ID to its record.
	Disks map[string]*Disk `json:"disks"`
	// Cordoned are the disk IDs an operator withdrew from allocation (the
	// LocalDisk's spec.cordoned): a cordoned disk keeps its volume, if it
	// has one, and is never handed out, before or after its cleanup. Kept
	// by disk ID, also for a disk the node does not manage (yet).
	Cordoned map[string]bool `json:"cordoned,omitempty"`
	// Damaged are the disk IDs the cloud reports damaged (the LocalDisk's
	// spec.damaged, set by the cluster component from ECS's events), with
	// why: out of allocation and capacity, and the volume on one is
	// abnormal. Kept by disk ID, also for a disk the node does not manage.
	Damaged map[string]string `json:"damaged,omitempty"`
	// Problems are what the last discovery found wrong (devices the cloud
	// does not know, cloud disks without a device, ...), for operators.
	Problems []string `json:"problems,omitempty"`
}

// New returns an empty record for node.
func New(node string) *Record {
	return &Record{Version: FormatVersion, Node: node, Disks: map[string]*Disk{}}
}

// Clone returns a deep copy of r.
func (r *Record) Clone() *Record {
	b, err := json.Marshal(r)
	if err != nil {
		panic(err) // only plain data: cannot fail
	}
	var c Record
	if err := json.Unmarshal(b, &c); err != nil {
		panic(err)
	}
	if c.Disks == nil {
		c.Disks = map[string]*Disk{}
	}
	return &c
}

// ErrCorrupt is returned by Decode, and by Load when no copy of the state
// can be trusted.
var ErrCorrupt = errors.New("node state file is corrupt")

// envelope carries the record with a checksum, so that a file damaged on disk
// is told apart from a valid one.
type envelope struct {
	Checksum string          `json:"checksum"`
	Record   json.RawMessage `json:"record"`
}

// Decode parses the bytes of a state file.
func Decode(b []byte) (*Record, error) {
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if env.Checksum != checksum(env.Record) {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	var r Record
	if err := json.Unmarshal(env.Record, &r); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if r.Version != FormatVersion {
		return nil, fmt.Errorf("%w: unsupported version %d", ErrCorrupt, r.Version)
	}
	if r.Disks == nil {
		r.Disks = map[string]*Disk{}
	}
	if err := checkDisks(r.Disks); err != nil {
		return nil, err
	}
	return &r, nil
}

// checkDisks holds what every record the driver writes satisfies: each entry
// is keyed by its own ID and has a known status, a free disk holds no volume,
// an allocated disk holds a volume with an ID, and no volume ID is on two
// disks. A violation is ErrCorrupt naming the disk.
func checkDisks(disks map[string]*Disk) error {
	ids := make([]string, 0, len(disks))
	for id := range disks {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	owner := map[string]string{} // volume ID -> disk ID
	for _, id := range ids {
		d := disks[id]
		if d == nil || d.ID != id {
			return fmt.Errorf("%w: disk entry %q is inconsistent", ErrCorrupt, id)
		}
		switch d.Status {
		case Free:
			if d.Volume != nil {
				return fmt.Errorf("%w: disk %q is free but holds volume %q", ErrCorrupt, id, d.Volume.ID)
			}
		case Allocated:
			if d.Volume == nil || d.Volume.ID == "" {
				return fmt.Errorf("%w: disk %q is allocated but holds no volume ID", ErrCorrupt, id)
			}
		case Cleaning, Failed:
		case Excluded:
			if d.Volume != nil {
				return fmt.Errorf("%w: disk %q is excluded but holds volume %q", ErrCorrupt, id, d.Volume.ID)
			}
		default:
			return fmt.Errorf("%w: disk %q has unknown status %q", ErrCorrupt, id, d.Status)
		}
		if d.Volume == nil || d.Volume.ID == "" {
			continue
		}
		if other, dup := owner[d.Volume.ID]; dup {
			return fmt.Errorf("%w: volume %q is on disk %q and on disk %q", ErrCorrupt, d.Volume.ID, other, id)
		}
		owner[d.Volume.ID] = id
	}
	return nil
}

// Encode renders a record as the bytes of a state file.
func Encode(r *Record) ([]byte, error) {
	rec, err := json.MarshalIndent(r, "  ", "  ")
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(envelope{Checksum: checksum(rec), Record: rec}, "", "  ")
}

func checksum(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// WriteFileAtomic replaces path with data crash-safely: write a temporary
// file, fsync it, rename it over the old one, fsync the directory. A reader
// after a crash sees the old or the new content, never a mix.
func WriteFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".state-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	crashpoint.Hit(crashpoint.StateTempWritten)
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	crashpoint.Hit(crashpoint.StateTempSynced)
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	crashpoint.Hit(crashpoint.StateRenamed)
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
