package mounter

// Tools are the commands the driver runs on the node. The container image
// must carry every one of them; a test checks the Dockerfile's package list
// against this list, and this list against the code.
var Tools = []string{
	"blkid", "wipefs", "blkdiscard", "blockdev", // Probe, Wipe, SetDeviceReadOnly
	"mkfs.ext4", "mkfs.xfs", // Format
	"mount", "umount", // Mount, BindMount, Unmount (through k8s.io/mount-utils)
}
