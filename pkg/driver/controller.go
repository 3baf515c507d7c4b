package driver

import (
	"context"
	"strconv"
	"strings"
	"unicode"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
)

const maxNameLength = 128

// CreateVolume gives the named volume one whole free disk of this node.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if name == "" || len(name) > maxNameLength {
		return nil, status.Errorf(codes.InvalidArgument, "name: must be 1 to %d bytes", maxNameLength)
	}
	if strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "name: %q contains a NUL or another control character", name)
	}
	if req.GetVolumeContentSource() != nil {
		return nil, status.Error(codes.InvalidArgument, "volume_content_source: snapshots and clones are not supported")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume_capabilities: required")
	}
	params, err := ParseParams(req.GetParameters())
	if err != nil {
		return nil, toStatus(err)
	}
	fsType, err := checkCapabilities(req.GetVolumeCapabilities(), params.FSType)
	if err != nil {
		return nil, toStatus(err)
	}
	params.FSType = fsType
	if err := ValidateMkfsOptions(orDefault(fsType), params.MkfsOptions); err != nil {
		return nil, toStatus(err)
	}
	if err := params.checkMode(req.GetVolumeCapabilities()); err != nil {
		return nil, toStatus(err)
	}
	required, limit := req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes()
	if required < 0 || limit < 0 || (limit > 0 && required > limit) {
		return nil, status.Errorf(codes.InvalidArgument, "capacity_range: required_bytes %d and limit_bytes %d are not a valid range", required, limit)
	}
	if !d.reachable(req.GetAccessibilityRequirements()) {
		return nil, status.Errorf(codes.ResourceExhausted, "accessibility_requirements: the requisite topology does not include node %s", d.cfg.NodeID)
	}
	release, err := d.locks.acquire("name/" + name)
	if err != nil {
		return nil, err
	}
	defer release()
	v, err := d.cfg.Inventory.Allocate(ctx, inventory.Request{
		Name: name, RequiredBytes: required, LimitBytes: limit,
		Filter:     params.filter(wantsBlock(req.GetVolumeCapabilities())),
		Parameters: params.stored(), CleanupPolicy: string(params.CleanupPolicy),
		PV: req.GetParameters()[paramPVName], ClaimNamespace: req.GetParameters()[paramPVCNamespace], ClaimName: req.GetParameters()[paramPVCName],
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(v)}, nil
}

func orDefault(fsType string) string {
	if fsType == "" {
		return defaultFSType
	}
	return fsType
}

// csiVolume describes a volume to the CO. The context tells NodeStage how to
// format and which disk to expect.
func (d *Driver) csiVolume(v inventory.Volume) *csi.Volume {
	vc := map[string]string{ctxDisk: v.Disk.ID, ctxIdentity: v.Disk.Identity, ctxMedia: v.Disk.Media}
	if v.Disk.CloudID != "" {
		vc[ctxCloudDiskID], vc[ctxCategory] = v.Disk.CloudID, v.Disk.Category
	}
	if v.Disk.InstanceID != "" {
		vc[CtxInstanceID] = v.Disk.InstanceID
	}
	if fs := v.Parameters[ctxFSType]; fs != "" {
		vc[ctxFSType] = fs
	}
	if o := v.Parameters[ParamMkfsOptions]; o != "" {
		vc[ctxMkfsOptions] = o
	}
	return &csi.Volume{
		VolumeId:           v.ID,
		CapacityBytes:      v.CapacityBytes,
		VolumeContext:      vc,
		AccessibleTopology: []*csi.Topology{d.topology()},
	}
}

// reachable says whether a CreateVolume's topology requirement admits this
// node. No requisite at all means this node.
func (d *Driver) reachable(req *csi.TopologyRequirement) bool {
	if len(req.GetRequisite()) == 0 {
		return true
	}
	for _, t := range req.GetRequisite() {
		if d.matchesSegment(t.GetSegments()) {
			return true
		}
	}
	return false
}

// matchesSegment says whether a topology segment describes this node. A
// segment naming keys the driver does not know is not this node.
func (d *Driver) matchesSegment(seg map[string]string) bool {
	for k, v := range seg {
		if k != d.TopologyKey() || v != d.cfg.NodeID {
			return false
		}
	}
	return true
}

// DeleteVolume marks the volume's disk for cleaning and returns; the disk is
// free again once the cleanup policy has run.
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id: required")
	}
	release, err := d.locks.acquire(id)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := d.cfg.Inventory.Release(ctx, id); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// GetCapacity reports the free disks matching the class on this node: the sum
// as available capacity, the largest as maximum volume size. Another node's
// segment has no capacity here.
func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	params, err := ParseParams(req.GetParameters())
	if err != nil {
		return nil, toStatus(err)
	}
	if _, err := checkCapabilities(req.GetVolumeCapabilities(), params.FSType); err != nil {
		return nil, toStatus(err)
	}
	if err := params.checkMode(req.GetVolumeCapabilities()); err != nil {
		return nil, toStatus(err)
	}
	if seg := req.GetAccessibleTopology().GetSegments(); len(seg) > 0 && !d.matchesSegment(seg) {
		return &csi.GetCapacityResponse{AvailableCapacity: 0}, nil
	}
	avail, maxSize, err := d.cfg.Inventory.Capacity(ctx, params.filter(wantsBlock(req.GetVolumeCapabilities())))
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: avail,
		MaximumVolumeSize: wrapInt64(maxSize),
	}, nil
}

// ValidateVolumeCapabilities confirms capabilities this driver can serve.
func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id: required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume_capabilities: required")
	}
	v, err := d.cfg.Inventory.Lookup(req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	if _, err := checkCapabilities(req.GetVolumeCapabilities(), v.Parameters[ctxFSType]); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// ListVolumes pages through the volumes of this node in volume ID order; the
// token is the index of the next entry.
func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, status.Error(codes.InvalidArgument, "max_entries: must not be negative")
	}
	vols, err := d.cfg.Inventory.Volumes()
	if err != nil {
		return nil, toStatus(err)
	}
	start := 0
	if tok := req.GetStartingToken(); tok != "" {
		start, err = strconv.Atoi(tok)
		if err != nil || start < 0 || start > len(vols) {
			return nil, status.Errorf(codes.Aborted, "starting_token %.64q is not valid", tok)
		}
	}
	end := len(vols)
	if n := int(req.GetMaxEntries()); n > 0 && start+n < end {
		end = start + n
	}
	resp := &csi.ListVolumesResponse{}
	for _, v := range vols[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: d.csiVolume(v)})
	}
	if end < len(vols) {
		resp.NextToken = strconv.Itoa(end)
	}
	return resp, nil
}

// ControllerGetCapabilities advertises create/delete, capacity and listing.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}
