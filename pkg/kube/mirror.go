// Package kube is the node driver's side of the Kubernetes API: it mirrors
// the node's disks into LocalDisk objects, applies the cordons operators set
// on them, and tells users what happened to their disks with events. The
// node's state record stays the only authority over allocation; nothing
// here is needed to serve volumes, and the mirror catches up when the API
// server is back.
package kube

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamiclister"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	v1alpha1 "github.com/ecs-localdisk/ecs-localdisk-csi/pkg/apis/v1alpha1"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/inventory"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/state"
)

// Inventory is what the mirror needs of the node's inventory.
type Inventory interface {
	View() []inventory.DiskView
	SetCordoned(id string, cordoned bool) (bool, error)
	SetDamaged(id, reason string) (bool, error)
}

// MirrorConfig wires a Mirror.
type MirrorConfig struct {
	// Node is this node's name.
	Node string
	// Dynamic writes the LocalDisks; Core reads the Node, PVs and claims
	// that events are about (NewCoreClient).
	Dynamic dynamic.Interface
	Core    Core
	// Inventory is the node's inventory.
	Inventory Inventory
	// Recorder emits the events; nil emits none.
	Recorder record.EventRecorder
	// Resync is how often the mirror syncs without a change; default 1m.
	Resync time.Duration
	// Clock is time (tests replace it); default the real clock.
	Clock clock.WithTicker
}

// Mirror keeps one LocalDisk per disk of its node, and applies the cordons
// set on them.
type Mirror struct {
	cfg     MirrorConfig
	trigger chan struct{}
	lister  cache.GenericLister
	nodeRef *corev1.ObjectReference
	events  *eventLimiter
}

// NewMirror returns a mirror; Run starts it.
func NewMirror(cfg MirrorConfig) *Mirror {
	if cfg.Resync == 0 {
		cfg.Resync = time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	return &Mirror{cfg: cfg, trigger: make(chan struct{}, 1), events: newEventLimiter(cfg.Clock, 10*time.Minute)}
}

// Changed wakes the mirror; it never blocks (inventory.Observer).
func (m *Mirror) Changed() {
	select {
	case m.trigger <- struct{}{}:
	default:
	}
}

// StateSaved is part of inventory.Observer.
func (m *Mirror) StateSaved(time.Duration, error) {}

// CleanupFailed is part of inventory.Observer: the Failed phase of the
// next sync tells it.
func (m *Mirror) CleanupFailed(state.Disk, error) {}

var _ inventory.Observer = (*Mirror)(nil)

// Run watches this node's LocalDisks and syncs them with the inventory on
// every change, on every edit of an object, and every Resync, until ctx
// ends. Failed syncs are retried with a backoff of up to five minutes.
func (m *Mirror) Run(ctx context.Context) {
	stop, ok := m.watch(ctx)
	defer stop()
	if !ok {
		return
	}
	delay := time.Second
	for ctx.Err() == nil {
		next := m.cfg.Resync
		if err := m.Sync(ctx); err != nil {
			klog.ErrorS(err, "Mirroring the node's disks into LocalDisks failed; retrying", "node", m.cfg.Node, "retryIn", delay)
			next, delay = delay, min(2*delay, 5*time.Minute)
		} else {
			delay = time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-m.trigger:
			// A burst of changes makes one sync.
			select {
			case <-ctx.Done():
			case <-m.cfg.Clock.After(200 * time.Millisecond):
			}
		case <-m.cfg.Clock.After(next):
		}
	}
}

// watch starts the informer of this node's LocalDisks, which wakes the
// mirror on every change, and waits for its cache; ok is false when ctx
// ended first. stop ends the informer.
func (m *Mirror) watch(ctx context.Context) (stop func(), ok bool) {
	res := m.cfg.Dynamic.Resource(v1alpha1.GroupVersionResource)
	mine := func(o metav1.ListOptions) metav1.ListOptions {
		o.FieldSelector = "spec.node=" + m.cfg.Node
		return o
	}
	// As client-go's dynamic informer does: a client that cannot stream
	// the initial list (a fake) gets list and watch.
	lw := cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return res.List(ctx, mine(o))
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return res.Watch(ctx, mine(o))
		},
	}, m.cfg.Dynamic)
	// No namespace index: LocalDisks are cluster-scoped, and the lister
	// only lists them all.
	inf := cache.NewSharedIndexInformerWithOptions(lw, &unstructured.Unstructured{},
		cache.SharedIndexInformerOptions{ObjectDescription: v1alpha1.GroupVersionResource.String()})
	wake := func(any) { m.Changed() }
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: wake, DeleteFunc: wake,
		UpdateFunc: func(_, o any) { wake(o) }}); err != nil {
		klog.ErrorS(err, "LocalDisk mirror not started")
		return func() {}, false
	}
	m.lister = dynamiclister.NewRuntimeObjectShim(dynamiclister.New(inf.GetIndexer(), v1alpha1.GroupVersionResource))
	ictx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		inf.RunWithContext(ictx)
	}()
	return func() { cancel(); <-done }, cache.WaitForCacheSync(ctx.Done(), inf.HasSynced)
}

// errNotReady: the inventory has not loaded its record yet.
var errNotReady = errors.New("the node's inventory is not ready")

// Sync makes this node's LocalDisks match the inventory: it first applies
// each object's spec.cordoned to the inventory, then creates the objects of
// new disks, updates the status of changed ones, deletes those of disks the
// node no longer knows, and emits the events of what changed.
func (m *Mirror) Sync(ctx context.Context) error {
	// The Node is read again by each sync that needs it (nodeOf): one
	// deleted and registered again has a new UID, which the objects made
	// from now on must own. A sync that only updates statuses reads none.
	m.nodeRef = nil
	objs, err := m.objects()
	if err != nil {
		return err
	}
	for _, o := range objs {
		if _, err := m.cfg.Inventory.SetCordoned(o.Spec.DiskID, o.Spec.Cordoned); errors.Is(err, inventory.ErrNotReady) {
			return errNotReady
		} else if err != nil {
			return fmt.Errorf("applying the cordon of LocalDisk %s: %w", o.Name, err)
		}
		if _, err := m.cfg.Inventory.SetDamaged(o.Spec.DiskID, o.Spec.Damaged); err != nil {
			return fmt.Errorf("applying the damage of LocalDisk %s: %w", o.Name, err)
		}
	}
	views := m.cfg.Inventory.View()
	if views == nil {
		return errNotReady
	}
	var errs []error
	for _, v := range views {
		o := objs[v.ID]
		delete(objs, v.ID)
		before := v1alpha1.LocalDiskStatus{}
		if o == nil {
			if o, err = m.create(ctx, v); err != nil {
				errs = append(errs, err)
				continue
			}
		} else {
			before = o.Status
		}
		want := statusOf(v)
		if equality.Semantic.DeepEqual(o.Status, want) {
			continue
		}
		if err := m.updateStatus(ctx, o, want); err != nil {
			errs = append(errs, err)
			continue
		}
		m.tell(ctx, v, before, want)
	}
	for _, o := range objs {
		if err := m.delete(ctx, o); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// objects lists this node's LocalDisks from the cache, by disk ID.
func (m *Mirror) objects() (map[string]*v1alpha1.LocalDisk, error) {
	list, err := m.lister.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	out := map[string]*v1alpha1.LocalDisk{}
	for _, item := range list {
		o, err := fromObject(item)
		if err != nil {
			klog.ErrorS(err, "Unreadable LocalDisk ignored")
			continue
		}
		if o.Spec.Node == m.cfg.Node && o.Spec.DiskID != "" {
			out[o.Spec.DiskID] = o
		}
	}
	return out, nil
}

// nodeOf returns the reference to this node's Node, read once per sync.
func (m *Mirror) nodeOf(ctx context.Context) (*corev1.ObjectReference, error) {
	if m.nodeRef != nil {
		return m.nodeRef, nil
	}
	n, err := m.cfg.Core.Node(ctx, m.cfg.Node)
	if err != nil {
		return nil, fmt.Errorf("reading node %s: %w", m.cfg.Node, err)
	}
	m.nodeRef = &corev1.ObjectReference{Kind: "Node", APIVersion: "v1", Name: n.Name, UID: n.UID}
	return m.nodeRef, nil
}

// create makes the LocalDisk of v, owned by the Node (it goes with the
// Node), with the cordon the node has recorded.
func (m *Mirror) create(ctx context.Context, v inventory.DiskView) (*v1alpha1.LocalDisk, error) {
	node, err := m.nodeOf(ctx)
	if err != nil {
		return nil, err
	}
	o := &v1alpha1.LocalDisk{
		TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.Group + "/" + v1alpha1.Version, Kind: v1alpha1.Kind},
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.ObjectName(m.cfg.Node, v.ID), OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}},
		Spec: v1alpha1.LocalDiskSpec{Node: m.cfg.Node, DiskID: v.ID, Cordoned: v.Cordoned, Damaged: v.Damaged},
	}
	u, err := toUnstructured(o)
	if err != nil {
		return nil, err
	}
	res := m.cfg.Dynamic.Resource(v1alpha1.GroupVersionResource)
	got, err := res.Create(ctx, u, metav1.CreateOptions{FieldManager: fieldManager})
	if apierrors.IsAlreadyExists(err) {
		got, err = res.Get(ctx, o.Name, metav1.GetOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("creating LocalDisk %s: %w", o.Name, err)
	}
	klog.V(2).InfoS("LocalDisk created", "name", o.Name, "disk", v.ID, "node", m.cfg.Node)
	return fromObject(got)
}

// updateStatus writes status onto o, guarded by o's resourceVersion.
func (m *Mirror) updateStatus(ctx context.Context, o *v1alpha1.LocalDisk, status v1alpha1.LocalDiskStatus) error {
	next := o.DeepCopy()
	next.Status = status
	u, err := toUnstructured(next)
	if err != nil {
		return err
	}
	if _, err := m.cfg.Dynamic.Resource(v1alpha1.GroupVersionResource).UpdateStatus(ctx, u, metav1.UpdateOptions{FieldManager: fieldManager}); err != nil {
		return fmt.Errorf("updating the status of LocalDisk %s: %w", o.Name, err)
	}
	return nil
}

// delete removes the LocalDisk of a disk the node no longer knows, only if
// it is still the object that was read.
func (m *Mirror) delete(ctx context.Context, o *v1alpha1.LocalDisk) error {
	uid, rv := o.UID, o.ResourceVersion
	err := m.cfg.Dynamic.Resource(v1alpha1.GroupVersionResource).Delete(ctx, o.Name,
		metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting LocalDisk %s of a disk the node no longer has: %w", o.Name, err)
	}
	klog.InfoS("LocalDisk deleted: the node no longer has its disk", "name", o.Name, "disk", o.Spec.DiskID, "node", m.cfg.Node)
	return nil
}

const fieldManager = "ecs-localdisk-csi"

func toUnstructured(o *v1alpha1.LocalDisk) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{Object: m}
	u.SetAPIVersion(v1alpha1.Group + "/" + v1alpha1.Version)
	u.SetKind(v1alpha1.Kind)
	return u, nil
}

func fromObject(obj runtime.Object) (*v1alpha1.LocalDisk, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return nil, fmt.Errorf("unexpected %T in the LocalDisk cache", obj)
	}
	var o v1alpha1.LocalDisk
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &o); err != nil {
		return nil, err
	}
	return &o, nil
}

// objectRef is a reference to a PV or a claim for events, with its UID
// when it can be read (kubectl describe matches events by UID).
func (m *Mirror) objectRef(ctx context.Context, kind, namespace, name string) *corev1.ObjectReference {
	ref := &corev1.ObjectReference{Kind: kind, APIVersion: "v1", Namespace: namespace, Name: name}
	var uid types.UID
	switch kind {
	case "PersistentVolume":
		if pv, err := m.cfg.Core.PersistentVolume(ctx, name); err == nil {
			uid = pv.UID
		}
	case "PersistentVolumeClaim":
		if pvc, err := m.cfg.Core.PersistentVolumeClaim(ctx, namespace, name); err == nil {
			uid = pvc.UID
		}
	}
	ref.UID = uid
	return ref
}
