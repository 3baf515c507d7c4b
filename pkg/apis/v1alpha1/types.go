// Package v1alpha1 is the LocalDisk API: one cluster-scoped object per disk
// a node's driver saw. Its status mirrors the node's state record, written
// by that node's driver only; spec.cordoned is the one field an operator
// sets.
package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Group, Version and the resource of LocalDisk.
const (
	Group    = "localdisk.csi.alibabacloud.com"
	Version  = "v1alpha1"
	Kind     = "LocalDisk"
	Resource = "localdisks"
)

// GroupVersionResource of LocalDisk.
var GroupVersionResource = schema.GroupVersionResource{Group: Group, Version: Version, Resource: Resource}

// Phases of a disk (status.phase).
const (
	PhaseFree      = "Free"
	PhaseAllocated = "Allocated"
	PhaseCleaning  = "Cleaning"
	PhaseFailed    = "Failed"
	PhaseExcluded  = "Excluded"
	PhaseMissing   = "Missing"
	PhaseDamaged   = "Damaged"
)

// The StorageClass parameter that says what the cluster component does when
// a volume's disk is lost (its node's instance released, the disk damaged or
// re-initialised): report it (events, conditions), or also delete the
// claim, its PV and a Pending pod using it, so that a StatefulSet recreates
// the claim on a node with a free disk. The data is gone either way.
const (
	ParamOnDiskLoss    = "onDiskLoss"
	OnDiskLossReport   = "report"
	OnDiskLossRecreate = "recreate"
)

// LocalDisk is one local disk of one node.
type LocalDisk struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              LocalDiskSpec   `json:"spec"`
	Status            LocalDiskStatus `json:"status,omitempty"`
}

// LocalDiskSpec names the disk; an operator may set Cordoned.
type LocalDiskSpec struct {
	// Node is the node the disk belongs to; set at creation, never changed.
	Node string `json:"node"`
	// DiskID is the driver's stable key of the disk on that node.
	DiskID string `json:"diskID"`
	// Cordoned withdraws the disk from allocation and capacity. A volume
	// already on it stays; after its cleanup the disk is not handed out
	// again until it is uncordoned.
	Cordoned bool `json:"cordoned,omitempty"`
	// Damaged, set by the cluster component, says why the cloud reports
	// the disk damaged (the ECS event); "" when it does not. A damaged
	// disk leaves allocation and capacity, and the volume on it is
	// reported abnormal. The node's driver follows it, never sets it.
	Damaged string `json:"damaged,omitempty"`
}

// LocalDiskStatus is what the node's driver knows of the disk.
type LocalDiskStatus struct {
	// Phase is Free, Allocated, Cleaning, Failed, Excluded, Missing or
	// Damaged.
	Phase string `json:"phase,omitempty"`
	// Cordoned is the cordon the driver has applied (it follows
	// spec.cordoned).
	Cordoned bool `json:"cordoned,omitempty"`
	// Reason explains Failed, Excluded and Damaged.
	Reason string `json:"reason,omitempty"`
	// Identity is where the disk's key came from ("serial:...", "wwn:...").
	Identity string `json:"identity,omitempty"`
	// CloudDiskID is the ECS disk ID (d-...), when known.
	CloudDiskID string `json:"cloudDiskID,omitempty"`
	// InstanceID is the ECS instance the disk belongs to, when known.
	InstanceID string `json:"instanceID,omitempty"`
	// Device is the device path now, or where it was last seen.
	Device string `json:"device,omitempty"`
	// SizeBytes is the usable size; Capacity the same for people.
	SizeBytes int64  `json:"sizeBytes,omitempty"`
	Capacity  string `json:"capacity,omitempty"`
	// Media is ssd or hdd; Category the ECS category.
	Media    string `json:"media,omitempty"`
	Category string `json:"category,omitempty"`
	// Volume is the volume on the disk, if any.
	Volume *VolumeRef `json:"volume,omitempty"`
	// Claim is "namespace/name" of the volume's claim, for the columns.
	Claim string `json:"claim,omitempty"`
	// Cleanup is the cleanup under way.
	Cleanup *Cleanup `json:"cleanup,omitempty"`
	// Residual: the disk may still hold an earlier volume's bytes (its
	// cleanup erased signatures only); it is zeroed before a raw hand-out.
	Residual bool `json:"residual,omitempty"`
	// LastTransitionTime is the last change of the phase.
	LastTransitionTime metav1.Time `json:"lastTransitionTime,omitempty"`
}

// VolumeRef names the volume on a disk and what it was created for.
type VolumeRef struct {
	ID               string `json:"id"`
	PersistentVolume string `json:"persistentVolume,omitempty"`
	ClaimNamespace   string `json:"claimNamespace,omitempty"`
	ClaimName        string `json:"claimName,omitempty"`
	// Abnormal says why the volume cannot be served, when it cannot.
	Abnormal string `json:"abnormal,omitempty"`
	// Lost says why the volume's data is gone (its disk reads blank where
	// its filesystem was), when it is.
	Lost string `json:"lost,omitempty"`
}

// Cleanup is the progress of a disk's cleanup.
type Cleanup struct {
	Policy string `json:"policy"`
	// DoneBytes of TotalBytes are written and synced (zero and shred; all
	// passes); Progress is the same as a percentage for the columns.
	DoneBytes  int64  `json:"doneBytes,omitempty"`
	TotalBytes int64  `json:"totalBytes,omitempty"`
	Progress   string `json:"progress,omitempty"`
}

var invalidName = regexp.MustCompile(`[^a-z0-9-]+`)

// ObjectName is the name of the LocalDisk of disk diskID on node: "<node>-
// <diskID>" when that is a valid object name as it stands. Otherwise (upper
// case, other characters, too long) the characters other than lower-case
// letters, digits and '-' become '-', it is cut short, and a hash of node
// and diskID makes it unique.
func ObjectName(node, diskID string) string {
	raw := node + "-" + diskID
	if len(validation.IsDNS1123Subdomain(raw)) == 0 {
		return raw
	}
	sum := sha256.Sum256([]byte(node + "/" + diskID))
	name := strings.Trim(invalidName.ReplaceAllString(strings.ToLower(raw), "-"), "-")
	if len(name) > 236 {
		name = strings.TrimRight(name[:236], "-")
	}
	if name == "" {
		return "disk-" + hex.EncodeToString(sum[:])[:16]
	}
	return name + "-" + hex.EncodeToString(sum[:])[:16]
}

// DeepCopy returns a copy of o that shares nothing with it.
func (o *LocalDisk) DeepCopy() *LocalDisk {
	c := *o
	o.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	if o.Status.Volume != nil {
		v := *o.Status.Volume
		c.Status.Volume = &v
	}
	if o.Status.Cleanup != nil {
		cl := *o.Status.Cleanup
		c.Status.Cleanup = &cl
	}
	return &c
}
