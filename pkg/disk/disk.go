// Package disk discovers the node's local block devices and reads their stable
// identity, size, media and the facts that decide whether the driver may use them.
package disk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"regexp"
)

// Media is the kind of storage behind a disk.
type Media string

const (
	// MediaSSD is a non-rotational disk.
	MediaSSD Media = "ssd"
	// MediaHDD is a rotational disk.
	MediaHDD Media = "hdd"
)

// Disk is one whole block device as seen at discovery time. Path may change
// across reboots; ID and Identity never do.
type Disk struct {
	// ID is the stable, short key of the disk, safe inside a volume ID
	// (characters [A-Za-z0-9.-] only, at most 48 characters).
	ID string `json:"id"`
	// Identity says where ID came from, for humans: "serial:XYZ",
	// "wwn:naa.5000...", "byid:nvme-...", "loop:/var/lib/disk0.img".
	Identity string `json:"identity"`
	// Path is the device node now, e.g. /dev/vdb or /dev/loop3.
	Path string `json:"path"`
	// Name is the kernel name, e.g. vdb, nvme0n1, loop3.
	Name string `json:"name"`
	// DevNum is the device number "MAJ:MIN" now, e.g. "253:16".
	DevNum string `json:"devNum,omitempty"`
	// SizeBytes is the size of the whole device.
	SizeBytes int64 `json:"sizeBytes"`
	// Media is ssd or hdd, from the rotational flag.
	Media Media `json:"media"`
	// Category is the cloud's disk category (e.g. local_ssd_pro), "" when unknown.
	Category string `json:"category,omitempty"`
	// CloudID is the cloud's disk ID (e.g. d-bp1...), "" when unknown.
	CloudID string `json:"cloudID,omitempty"`
	// InstanceID is the cloud instance the disk belongs to (an ECS
	// instance ID), "" when unknown.
	InstanceID string `json:"instanceID,omitempty"`
	// ReservedTailBytes at the end of the device belong to the driver (the
	// identity pin of a disk without a serial): filesystems stop short of
	// them and the disk is never handed out raw.
	ReservedTailBytes int64 `json:"reservedTailBytes,omitempty"`
	// Facts is what discovery saw on the device.
	Facts Facts `json:"facts"`
}

// Facts are the observations that may exclude a device from use. Discovery only
// reports them; the driver decides, because a device mounted or formatted by one
// of the driver's own volumes is expected to look that way.
type Facts struct {
	// System is set when the device holds the root filesystem (or a partition of it).
	System bool `json:"system,omitempty"`
	// Mounted is set when the device or one of its partitions is in use by
	// a mount anywhere: a filesystem mounted from it, or its device node
	// bind-mounted (then DeviceNodeBinds says where).
	Mounted bool `json:"mounted,omitempty"`
	// DeviceNodeBinds lists the mount points onto which the device node of
	// the device or of one of its partitions is bind-mounted: how the
	// kubelet publishes a raw block volume, of this driver or any other.
	// Such a mount shows the node's filesystem (devtmpfs, tmpfs) in the
	// mount table, not the disk. Mounted is set whenever this is not empty.
	DeviceNodeBinds []string `json:"deviceNodeBinds,omitempty"`
	// Partitioned is set when the kernel sees partitions on the device.
	Partitioned bool `json:"partitioned,omitempty"`
	// DeviceMapper is set for dm-* devices.
	DeviceMapper bool `json:"deviceMapper,omitempty"`
	// Holders lists the devices stacked on this one (LVM, md, dm), if any.
	Holders []string `json:"holders,omitempty"`
	// Signatures lists the filesystem, RAID or partition-table signatures found
	// on the device by a low-level probe, e.g. ["ext4"], ["gpt"].
	Signatures []string `json:"signatures,omitempty"`
	// FSUUID is the filesystem UUID when Signatures holds a filesystem.
	FSUUID string `json:"fsUUID,omitempty"`
	// ReadOnly is set when the kernel marks the device read-only.
	ReadOnly bool `json:"readOnly,omitempty"`
}

// Source lists the candidate local disks of this node. Implementations must not
// write to any device.
type Source interface {
	// Discover returns every device the source is configured to consider, with
	// facts filled in. A device that cannot be read at all is returned with an
	// error in the slice of problems rather than failing the whole call.
	Discover(ctx context.Context) ([]Disk, []error, error)
	// Identify reads the identity of the device now at path, so that a caller
	// can check that a device has not been swapped since discovery.
	Identify(ctx context.Context, path string) (id, identity string, err error)
}

var safeID = regexp.MustCompile(`^[A-Za-z0-9.-]{1,40}$`)

// MakeID turns an identity kind and value into a disk ID: the value itself when
// it is short and made of safe characters, otherwise a hash of it.
func MakeID(kind, value string) string {
	if safeID.MatchString(value) {
		return kind + "-" + value
	}
	sum := sha256.Sum256([]byte(kind + ":" + value))
	return kind + "-h" + hex.EncodeToString(sum[:])[:24]
}

// Probe is what a low-level signature probe found on a device.
type Probe struct {
	// Signatures lists every signature found: filesystem types ("ext4"),
	// partition tables ("gpt", "dos"), RAID or LVM members ("LVM2_member").
	// Empty means the device looks blank.
	Signatures []string
	// FSType is the filesystem type when one was found, else "".
	FSType string
	// UUID is the filesystem UUID when one was found, else "".
	UUID string
}

// Prober reads the signatures on a device without changing it.
type Prober interface {
	Probe(ctx context.Context, device string) (Probe, error)
}
