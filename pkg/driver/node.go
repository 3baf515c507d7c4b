package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"unicode"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	mount "k8s.io/mount-utils"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/mounter"
)

// NodeStageVolume formats the volume's disk if it is blank and mounts it at
// the staging path; for a block volume it readies the disk to be handed out
// raw (see inventory.ExposeRaw).
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id, staging, vc := req.GetVolumeId(), req.GetStagingTargetPath(), req.GetVolumeCapability()
	if err := requireArgs(id, "staging_target_path", staging, vc); err != nil {
		return nil, err
	}
	fsType, err := checkCapabilities([]*csi.VolumeCapability{vc}, "")
	if err != nil {
		return nil, toStatus(err)
	}
	if err := checkNotSymlink("staging_target_path", staging); err != nil {
		return nil, toStatus(err)
	}
	release, err := d.locks.acquire(id)
	if err != nil {
		return nil, err
	}
	defer release()
	if vc.GetBlock() != nil {
		if _, _, err := d.cfg.Inventory.ExposeRaw(ctx, id); err != nil {
			return nil, d.refusal(id, err)
		}
		return &csi.NodeStageVolumeResponse{}, nil
	}
	v, dev, err := d.cfg.Inventory.Acquire(ctx, id)
	if err != nil {
		return nil, d.refusal(id, err)
	}
	stored := v.Parameters[ctxFSType]
	if fsType != "" && stored != "" && fsType != stored {
		return nil, status.Errorf(codes.InvalidArgument, "volume_capability: fs_type %q conflicts with the volume's %q", fsType, stored)
	}
	fsType = orDefault(firstNonEmpty(fsType, stored))
	if err := d.stageFilesystem(ctx, v, dev, staging, fsType, mountFlags(fsType, vc)); err != nil {
		return nil, d.refusal(id, err)
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// stageFilesystem mounts the volume's filesystem at staging, having the
// inventory make it first when the disk is blank (see PrepareFilesystem).
func (d *Driver) stageFilesystem(ctx context.Context, v inventory.Volume, dev, staging, fsType string, flags []string) error {
	if m, err := d.mountAt(staging); err != nil {
		return err
	} else if m != nil {
		if same, err := d.sameDevice(m, dev); err != nil || !same {
			return fmt.Errorf("%w: %s is a mount of %s, not of this volume; it is left as it is", errPrecondition, staging, m.Source)
		}
		return nil // already staged
	}
	if err := makeEmptyDir("staging_target_path", staging); err != nil {
		return err
	}
	if err := ValidateMkfsOptions(fsType, strings.Fields(v.Parameters[ParamMkfsOptions])); err != nil {
		return err
	}
	if err := d.cfg.Inventory.PrepareFilesystem(ctx, v, dev, fsType, strings.Fields(v.Parameters[ParamMkfsOptions])); err != nil {
		return err
	}
	return d.cfg.Mounter.Mount(dev, staging, fsType, flags)
}

// NodeUnstageVolume unmounts the volume's filesystem from the staging
// path. It is idempotent, and it unmounts nothing but the volume's own
// mount (see unmountOwn).
func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	if id == "" || staging == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id and staging_target_path are required")
	}
	if err := checkPath("staging_target_path", staging); err != nil {
		return nil, err
	}
	release, err := d.locks.acquire(id)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := d.unmountOwn(ctx, id, staging); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume bind-mounts the staging directory (filesystem) or the
// device node (block) onto the target, read-only when asked.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, vc := req.GetVolumeId(), req.GetTargetPath(), req.GetVolumeCapability()
	if err := requireArgs(id, "target_path", target, vc); err != nil {
		return nil, err
	}
	staging := req.GetStagingTargetPath()
	if err := checkPath("staging_target_path", staging); err != nil {
		return nil, err
	}
	if _, err := checkCapabilities([]*csi.VolumeCapability{vc}, ""); err != nil {
		return nil, toStatus(err)
	}
	if err := checkNotSymlink("target_path", target); err != nil {
		return nil, toStatus(err)
	}
	if err := checkNotSymlink("staging_target_path", staging); err != nil {
		return nil, toStatus(err)
	}
	release, err := d.locks.acquire(id)
	if err != nil {
		return nil, err
	}
	defer release()
	ro := req.GetReadonly() || readOnlyMode(vc)
	if vc.GetBlock() != nil {
		var dev string
		if _, dev, err = d.cfg.Inventory.ExposeRaw(ctx, id); err == nil {
			err = d.publishBlock(dev, target, ro)
		}
	} else {
		var dev string
		if _, dev, err = d.cfg.Inventory.Acquire(ctx, id); err == nil {
			err = d.publishMount(dev, staging, target, ro)
		}
	}
	if err != nil {
		return nil, d.refusal(id, err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// refusal maps err to its gRPC status, and first reports a volume the node
// refuses to serve for safety (its disk is another disk, holds data that is
// not the volume's, or lost the volume's data) to Config.Refusals, so that
// users see it where they look.
func (d *Driver) refusal(id string, err error) error {
	if d.cfg.Refusals != nil && (errors.Is(err, inventory.ErrForeign) || errors.Is(err, inventory.ErrIdentityMismatch) ||
		errors.Is(err, inventory.ErrDataGone)) {
		if v, lerr := d.cfg.Inventory.Lookup(id); lerr == nil {
			d.cfg.Refusals.VolumeRefused(v, err.Error())
		}
	}
	return toStatus(err)
}

// publishBlock binds the device node onto target. A read-only publication
// sets the device's kernel read-only flag before the bind and again on
// every retry, so that no moment and no crash leaves it writable; read-only
// and read-write publications of one device at once are refused, because
// the flag is the device's.
func (d *Driver) publishBlock(dev, target string, ro bool) error {
	if m, err := d.mountAt(target); err != nil {
		return err
	} else if m != nil {
		if same, err := d.sameDeviceNode(target, dev); err != nil || !same {
			return fmt.Errorf("%w: %s is a mount of %s, not this volume's device; it is left as it is", errPrecondition, target, m.Source)
		}
		if readOnly(m) != ro {
			return fmt.Errorf("%w: %s is already published differently", errConflict, target)
		}
		return d.syncBlockReadOnly(dev)
	}
	anyRO, anyRW, err := d.blockPublications(dev)
	if err != nil {
		return err
	}
	if (ro && anyRW) || (!ro && anyRO) {
		return fmt.Errorf("%w: %s is published read-only and read-write at once elsewhere; the kernel's read-only flag is the whole device's", errPrecondition, dev)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return fmt.Errorf("creating block target %s: %w", target, err)
	}
	f.Close()
	if ro {
		if err := d.cfg.Mounter.SetDeviceReadOnly(dev, true); err != nil {
			return err
		}
	}
	if err := d.cfg.Mounter.BindMount(dev, target, ro); err != nil {
		return errors.Join(err, d.syncBlockReadOnly(dev))
	}
	return d.syncBlockReadOnly(dev)
}

// blockPublications says whether the device node dev is bind-mounted
// read-only, read-write, or both, anywhere.
func (d *Driver) blockPublications(dev string) (anyRO, anyRW bool, err error) {
	uses, err := mounter.Uses(d.cfg.Mounter, dev)
	if err != nil {
		return false, false, err
	}
	for i := range uses {
		if !uses[i].DeviceNode {
			continue
		}
		if readOnly(&uses[i].MountInfo) {
			anyRO = true
		} else {
			anyRW = true
		}
	}
	return anyRO, anyRW, nil
}

// syncBlockReadOnly makes the device read-only exactly while it is published
// and every publication of it is read-only: a read-only bind mount alone does
// not stop writes through a device node.
func (d *Driver) syncBlockReadOnly(dev string) error {
	anyRO, anyRW, err := d.blockPublications(dev)
	if err != nil {
		return err
	}
	return d.cfg.Mounter.SetDeviceReadOnly(dev, anyRO && !anyRW)
}

func (d *Driver) publishMount(dev, staging, target string, ro bool) error {
	sm, err := d.mountAt(staging)
	if err != nil {
		return err
	}
	if sm == nil {
		return fmt.Errorf("%w: volume is not staged at %s", errPrecondition, staging)
	}
	if same, err := d.sameDevice(sm, dev); err != nil || !same {
		return fmt.Errorf("%w: %s holds another device", errPrecondition, staging)
	}
	if m, err := d.mountAt(target); err != nil {
		return err
	} else if m != nil {
		if same, err := d.sameDevice(m, dev); err != nil || !same {
			return fmt.Errorf("%w: %s is a mount of %s, not of this volume; it is left as it is", errPrecondition, target, m.Source)
		}
		if readOnly(m) != ro {
			return fmt.Errorf("%w: %s is already published differently", errConflict, target)
		}
		return nil
	}
	if err := makeEmptyDir("target_path", target); err != nil {
		return err
	}
	return d.cfg.Mounter.BindMount(staging, target, ro)
}

// makeEmptyDir creates the directory path, or checks that it is empty: a
// mount over a directory with entries would hide them, and the directory
// could then never be removed at unpublish.
func makeEmptyDir(field, path string) error {
	if err := os.MkdirAll(path, 0o750); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if len(names) > 0 {
		return fmt.Errorf("%w: %s: %s is not empty (it holds %q); mounting over it would hide its files", errPrecondition, field, path, names[0])
	}
	return nil
}

// NodeUnpublishVolume unmounts the volume's publication from the target and
// removes the target. It is idempotent, and it unmounts nothing but the
// volume's own publication (see unmountOwn).
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if id == "" || target == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id and target_path are required")
	}
	if err := checkPath("target_path", target); err != nil {
		return nil, err
	}
	release, err := d.locks.acquire(id)
	if err != nil {
		return nil, err
	}
	defer release()
	wasBlock := d.isBlock(target)
	if err := d.unmountOwn(ctx, id, target); err != nil {
		return nil, toStatus(err)
	}
	if err := removeTarget(target); err != nil {
		return nil, toStatus(err)
	}
	if wasBlock {
		if _, dev, err := d.cfg.Inventory.Device(ctx, id); err == nil {
			if err := d.syncBlockReadOnly(dev); err != nil {
				return nil, toStatus(err)
			}
		}
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// maxStackedMounts bounds how many mounts stacked on one path are undone.
const maxStackedMounts = 8

// unmountOwn is the one owner of unmounting a volume: it unmounts what is
// mounted at path for as long as it is the volume's own (a mount of its
// disk's filesystem, a bind of its staging mount, or a bind of its device
// node), and nothing else. Nothing mounted at path is OK whatever the ID.
// A mounted path with an ID that names no volume of this node is NOT_FOUND;
// a mount that is not the volume's is FAILED_PRECONDITION and stays.
func (d *Driver) unmountOwn(ctx context.Context, id, path string) error {
	for i := 0; i < maxStackedMounts; i++ {
		m, err := d.mountAt(path)
		if err != nil || m == nil {
			return err
		}
		own, err := d.ownMount(ctx, id, path, m)
		if err != nil {
			return err
		}
		if !own {
			return fmt.Errorf("%w: %s is a mount of %s (%s %d:%d), not of volume %s; it is left mounted",
				errPrecondition, path, m.Source, m.FsType, m.Major, m.Minor, id)
		}
		if err := d.cfg.Mounter.Unmount(path); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s still mounted after %d unmounts", path, maxStackedMounts)
}

// ownMount says whether the mount m at path is volume id's own: of its
// disk's device, as a filesystem or as a bound device node. When the disk is
// gone (dead, unplugged, or absent at this start), the device number it was
// last seen with, kept in the node state, tells its mounts: a filesystem
// mount carries that number, and a bound device node still stats as it
// after the node itself was deleted. A device present now under that number
// is another disk, and its mounts are not the volume's.
func (d *Driver) ownMount(ctx context.Context, id, path string, m *mount.MountInfo) (bool, error) {
	_, dev, err := d.cfg.Inventory.Acquire(ctx, id)
	switch {
	case errors.Is(err, inventory.ErrDeviceMissing), errors.Is(err, inventory.ErrIdentityMismatch):
		return d.lastSeenMount(ctx, id, path, m), nil
	case err != nil:
		return false, err
	}
	if same, err := d.sameDevice(m, dev); err == nil && same {
		return true, nil
	}
	same, err := d.sameDeviceNode(path, dev)
	return err == nil && same, nil
}

// lastSeenMount is ownMount for a volume whose disk is not present now.
func (d *Driver) lastSeenMount(ctx context.Context, id, path string, m *mount.MountInfo) bool {
	lastPath, number, otherThere := d.cfg.Inventory.LastDevice(ctx, id)
	if number == "" {
		return false
	}
	if n, err := d.cfg.Mounter.DeviceNumber(lastPath); err == nil && devNum(n) == number && otherThere {
		return false // another disk has that number now: whose mount this is cannot be told
	}
	if fmt.Sprintf("%d:%d", m.Major, m.Minor) == number {
		return true
	}
	if m.FsType == "devtmpfs" || m.FsType == "tmpfs" {
		n, err := d.cfg.Mounter.DeviceNumber(path)
		return err == nil && devNum(n) == number
	}
	return false
}

// devNum renders a device number as "MAJ:MIN".
func devNum(n uint64) string { return fmt.Sprintf("%d:%d", unix.Major(n), unix.Minor(n)) }

// NodeGetVolumeStats reports usage of a published or staged volume and its
// condition: abnormal when its disk is gone or its filesystem turned read-only.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" || path == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id and volume_path are required")
	}
	v, err := d.cfg.Inventory.Lookup(id)
	if err != nil {
		return nil, toStatus(err)
	}
	if v.Abnormal != "" {
		return &csi.NodeGetVolumeStatsResponse{VolumeCondition: &csi.VolumeCondition{Abnormal: true, Message: v.Abnormal}}, nil
	}
	if v.Damaged != "" {
		msg := "the local disk " + v.Disk.ID + " is damaged: " + v.Damaged
		if d.cfg.Refusals != nil {
			d.cfg.Refusals.VolumeAbnormal(v, msg)
		}
		return &csi.NodeGetVolumeStatsResponse{VolumeCondition: &csi.VolumeCondition{Abnormal: true, Message: msg}}, nil
	}
	m, err := d.mountAt(path)
	if err != nil {
		return nil, toStatus(err)
	}
	if m == nil {
		return nil, status.Errorf(codes.NotFound, "volume %.160s is not mounted at %.256q", id, path)
	}
	_, dev, devErr := d.cfg.Inventory.Device(ctx, id)
	if devErr != nil {
		return &csi.NodeGetVolumeStatsResponse{VolumeCondition: &csi.VolumeCondition{
			Abnormal: true, Message: devErr.Error()}}, nil
	}
	if d.isBlock(path) {
		if same, err := d.sameDeviceNode(path, dev); err != nil || !same {
			return nil, status.Errorf(codes.NotFound, "volume %.160s is not at %.256q", id, path)
		}
		size, err := d.cfg.Mounter.DeviceSize(path)
		if err != nil {
			return nil, toStatus(err)
		}
		return &csi.NodeGetVolumeStatsResponse{
			Usage:           []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}},
			VolumeCondition: &csi.VolumeCondition{Message: "ok"},
		}, nil
	}
	if same, err := d.sameDevice(m, dev); err != nil || !same {
		return nil, status.Errorf(codes.NotFound, "volume %.160s is not at %.256q", id, path)
	}
	st, err := d.cfg.Mounter.FSStats(path)
	if err != nil {
		return nil, toStatus(err)
	}
	cond := fsCondition(m)
	if cond.Abnormal && d.cfg.Refusals != nil {
		d.cfg.Refusals.VolumeAbnormal(v, cond.Message)
	}
	return &csi.NodeGetVolumeStatsResponse{
		Usage: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: st.TotalBytes, Used: st.UsedBytes, Available: st.AvailableBytes},
			{Unit: csi.VolumeUsage_INODES, Total: st.TotalInodes, Used: st.UsedInodes, Available: st.FreeInodes},
		},
		VolumeCondition: cond,
	}, nil
}

// mountFlags are the capability's mount options, plus "ro" for read-only
// access, plus errors=remount-ro for ext4 unless the class chose an errors=
// behaviour: a filesystem with errors stops taking writes, and the volume
// condition reports it, instead of corrupting further.
func mountFlags(fsType string, vc *csi.VolumeCapability) []string {
	flags := append([]string(nil), vc.GetMount().GetMountFlags()...)
	if readOnlyMode(vc) {
		flags = append(flags, "ro")
	}
	if fsType == "ext4" && !strings.Contains(","+strings.Join(flags, ",")+",", ",errors=") {
		flags = append(flags, "errors=remount-ro")
	}
	return flags
}

// fsCondition is abnormal when the filesystem itself went read-only (the
// kernel's reaction to I/O or metadata errors; newer kernels say
// emergency_ro) while the mount is read-write.
func fsCondition(m *mount.MountInfo) *csi.VolumeCondition {
	superRO := hasOpt(m.SuperOptions, "ro") || hasOpt(m.SuperOptions, "emergency_ro")
	if superRO && hasOpt(m.MountOptions, "rw") {
		return &csi.VolumeCondition{Abnormal: true, Message: "filesystem on " + m.Source + " turned read-only (I/O or filesystem errors); check the kernel log"}
	}
	return &csi.VolumeCondition{Message: "ok"}
}

// NodeGetInfo reports the node ID, the disk count as the volume limit, and the
// topology segment naming this node. Until the inventory is ready it answers
// UNAVAILABLE: the kubelet caches the limit, and a limit read before the
// record loaded would be wrong.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	limit, err := d.cfg.Inventory.VolumeLimit()
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeGetInfoResponse{
		NodeId:             d.cfg.NodeID,
		MaxVolumesPerNode:  int64(limit),
		AccessibleTopology: d.topology(),
	}, nil
}

// NodeGetCapabilities advertises staging, volume stats and volume condition.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_VOLUME_CONDITION,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func requireArgs(id, pathName, path string, vc *csi.VolumeCapability) error {
	switch {
	case id == "":
		return status.Error(codes.InvalidArgument, "volume_id: required")
	case path == "":
		return status.Errorf(codes.InvalidArgument, "%s: required", pathName)
	case vc == nil:
		return status.Error(codes.InvalidArgument, "volume_capability: required")
	}
	return checkPath(pathName, path)
}

// Linux path limits: PATH_MAX (4096) counts the terminating NUL; NAME_MAX
// bounds one component.
const (
	maxPathLength    = 4095
	maxPathComponent = 255
)

// checkPath refuses a path the driver must not create, mount on or remove:
// empty, longer than Linux allows, holding a NUL or another control
// character, relative, or not in clean form ("..", ".", "//").
func checkPath(field, path string) error {
	switch {
	case path == "":
		return status.Errorf(codes.InvalidArgument, "%s: required", field)
	case len(path) > maxPathLength:
		return status.Errorf(codes.InvalidArgument, "%s: %d bytes, at most %d allowed", field, len(path), maxPathLength)
	case strings.IndexFunc(path, unicode.IsControl) >= 0:
		return status.Errorf(codes.InvalidArgument, "%s: %q contains a NUL or another control character", field, path)
	case !filepath.IsAbs(path) || filepath.Clean(path) != strings.TrimSuffix(path, "/"):
		return status.Errorf(codes.InvalidArgument, "%s: %q must be an absolute, clean path", field, path)
	}
	for _, c := range strings.Split(path, "/") {
		if len(c) > maxPathComponent {
			return status.Errorf(codes.InvalidArgument, "%s: a component of %.64q... is %d bytes, at most %d allowed", field, path, len(c), maxPathComponent)
		}
	}
	return nil
}

// checkNotSymlink refuses a path that is a symbolic link: a mount on it, or a
// bind mount from it, would act wherever the link points, outside the path
// the CO owns.
func checkNotSymlink(field, path string) error {
	fi, err := os.Lstat(path)
	if err == nil && fi.Mode()&os.ModeSymlink != 0 {
		return invalid("%s: %s is a symbolic link", field, path)
	}
	return nil
}

// removeTarget removes what publish leaves at target once unmounted: a
// directory (os.Remove takes only an empty one) or an empty regular file, the
// block target. Anything else (a file with data, a device node, a symbolic
// link) was not made by the driver and is left in place; so is a directory
// holding files, and that answer is OK, so that unpublish converges.
func removeTarget(target string) error {
	fi, err := os.Lstat(target)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if !fi.IsDir() && !(fi.Mode().IsRegular() && fi.Size() == 0) {
		return invalid("target_path: %s is not a directory or an empty file (mode %s, %d bytes); the driver never created it and leaves it in place", target, fi.Mode(), fi.Size())
	}
	err = os.Remove(target)
	if fi.IsDir() && errors.Is(err, syscall.ENOTEMPTY) {
		// Files the driver never put there (publish refuses a directory
		// that is not empty): they are kept, and the call converges.
		klog.InfoS("Target directory not removed: it holds files the driver did not create", "targetPath", target)
		return nil
	}
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("removing %s: %w", target, err)
	}
	return nil
}

// mountAt returns the topmost mount at path, or nil.
func (d *Driver) mountAt(path string) (*mount.MountInfo, error) {
	infos, err := d.cfg.Mounter.MountInfo()
	if err != nil {
		return nil, err
	}
	path = filepath.Clean(path)
	var top *mount.MountInfo
	for i := range infos {
		if infos[i].MountPoint == path {
			top = &infos[i]
		}
	}
	return top, nil
}

// sameDevice says whether a filesystem mount is of the block device dev.
func (d *Driver) sameDevice(m *mount.MountInfo, dev string) (bool, error) {
	r, err := d.cfg.Mounter.DeviceNumber(dev)
	if err != nil {
		return false, err
	}
	return uint32(m.Major) == unix.Major(r) && uint32(m.Minor) == unix.Minor(r), nil
}

// sameDeviceNode says whether path is (a bind mount of) the device node dev.
func (d *Driver) sameDeviceNode(path, dev string) (bool, error) {
	a, errA := d.cfg.Mounter.DeviceNumber(path)
	b, errB := d.cfg.Mounter.DeviceNumber(dev)
	if err := errors.Join(errA, errB); err != nil {
		return false, err
	}
	return a == b, nil
}

func (d *Driver) isBlock(path string) bool {
	_, err := d.cfg.Mounter.DeviceNumber(path)
	return err == nil
}

func readOnly(m *mount.MountInfo) bool { return hasOpt(m.MountOptions, "ro") }

func hasOpt(opts []string, o string) bool {
	for _, x := range opts {
		if x == o {
			return true
		}
	}
	return false
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// CheckLost looks for the volumes whose data is gone (inventory.CheckLost),
// each under its operation lock: a volume busy with a CSI call is looked
// at next time. It returns how many it found lost.
func (d *Driver) CheckLost(ctx context.Context) (int, error) {
	ids, err := d.cfg.Inventory.LostCandidates()
	if err != nil {
		return 0, err
	}
	lost := 0
	for _, id := range ids {
		release, err := d.locks.acquire(id)
		if err != nil {
			continue
		}
		gone, err := d.cfg.Inventory.CheckLost(ctx, id)
		release()
		if err != nil {
			return lost, err
		}
		if gone {
			lost++
		}
	}
	return lost, nil
}
