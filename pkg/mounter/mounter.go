// Package mounter is the driver's only way to format, mount, wipe and measure
// block devices and filesystems. Everything goes through Interface so that node
// logic can be tested with Fake, and the real implementation runs every tool with
// an argument vector, never through a shell.
package mounter

import (
	"context"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/disk"
	mount "k8s.io/mount-utils"
)

// CleanupPolicy says how a disk is cleaned after its volume is deleted.
type CleanupPolicy string

const (
	// CleanupSignatures erases filesystem, RAID and partition-table signatures.
	CleanupSignatures CleanupPolicy = "signatures"
	// CleanupDiscard discards (TRIMs) the whole device, then erases signatures.
	CleanupDiscard CleanupPolicy = "discard"
	// CleanupZero writes zeroes over the whole device.
	CleanupZero CleanupPolicy = "zero"
	// CleanupShred overwrites the whole device with random data, then zeroes.
	CleanupShred CleanupPolicy = "shred"
)

// FSStats is the usage of a mounted filesystem.
type FSStats struct {
	TotalBytes, UsedBytes, AvailableBytes int64
	TotalInodes, UsedInodes, FreeInodes   int64
}

// Interface is everything the node does to devices and mounts.
type Interface interface {
	disk.Prober

	// Format creates a filesystem of fsType ("ext4" or "xfs") on device with the
	// given filesystem UUID and extra mkfs arguments (already validated). The
	// defaults avoid work proportional to the device size (no discard, lazy
	// inode table and journal initialisation); extra arguments may override
	// them. sizeBytes > 0 limits the filesystem to the device's first
	// sizeBytes. Format refuses a device that carries any signature.
	Format(ctx context.Context, device, fsType, uuid string, sizeBytes int64, extraArgs []string) error
	// Mount mounts device at target with fsType and options.
	Mount(device, target, fsType string, options []string) error
	// BindMount bind-mounts source (a directory or a device node) onto target,
	// read-only when readOnly is set.
	BindMount(source, target string, readOnly bool) error
	// Unmount unmounts target once.
	Unmount(target string) error
	// MountInfo lists the mounts of this mount namespace.
	MountInfo() ([]mount.MountInfo, error)
	// Wipe cleans device according to policy and fails if the device still
	// carries a signature afterwards; o tunes and resumes the overwriting
	// policies (zero, shred).
	Wipe(ctx context.Context, device string, policy CleanupPolicy, o WipeOptions) error
	// FSStats measures the filesystem mounted at path.
	FSStats(path string) (FSStats, error)
	// DeviceSize returns the size in bytes of the block device at path (a device
	// node, or a file a device node is bind-mounted onto).
	DeviceSize(path string) (int64, error)
	// DeviceNumber returns the device number (major:minor as in stat's
	// st_rdev) of the block device node at path, or of the device node
	// bind-mounted onto path; an error when path is not a block device.
	DeviceNumber(path string) (uint64, error)
	// CheckUnclaimed opens the block device at path exclusively and closes
	// it again: it fails (EBUSY) while the device is mounted, held by
	// device-mapper, md or LVM, or opened exclusively by anyone else. A bind
	// mount of the device node is no such claim; Uses finds those.
	CheckUnclaimed(device string) error
	// SetDeviceReadOnly sets or clears the kernel's read-only flag of the
	// block device at path. A read-only bind mount does not stop writes
	// through a device node; this flag does.
	SetDeviceReadOnly(device string, readOnly bool) error
	// Counters returns what the kernel counts for the block device at
	// path: which media is behind it, and what was written to it.
	Counters(device string) (DeviceCounters, error)
	// Partitions lists the partitions the kernel has of the block device
	// at path. One added to the kernel alone (BLKPG: partx, addpart), with
	// no table on the disk, can hold a filesystem that a probe of the whole
	// disk does not see.
	Partitions(device string) ([]string, error)
}

// DeviceCounters tell, by comparison with an earlier reading, whether a
// block device may have changed.
type DeviceCounters struct {
	// Media changes whenever other media is behind the device node: another
	// device number, or the kernel's disk sequence number (diskseq, Linux
	// 5.15 and later), which moves when a disk is replaced or a loop device
	// gets another backing file. "" when the kernel keeps no diskseq.
	Media string
	// Writes changes whenever data reaches the device, or is discarded from
	// it, through the kernel's block layer (its partitions and the devices
	// stacked on it included). Data still in a writer's page cache shows
	// once it is flushed, at the latest when the writer closes the device.
	// "" when the kernel cannot tell: I/O in flight, or no I/O accounting
	// for the device (queue/iostats off, or nothing ever counted).
	Writes string
}
