// Package recovery is the cluster component's logic: the only place where
// cluster-wide decisions about lost disks are made. It finds the volumes of
// nodes that are gone (confirmed with ECS where the driver knows the node's
// instance), reports them with events and, for classes that opt in
// (onDiskLoss: recreate), deletes their claims, PVs and Pending pods so
// that StatefulSets recreate them on nodes with free disks. Every deletion
// is guarded by the object's UID and resourceVersion.
package recovery

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	v1alpha1 "github.com/ecs-localdisk/ecs-localdisk-csi/pkg/apis/v1alpha1"
	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
)

// Cloud is what the controller asks ECS; *cloud.API implements it.
type Cloud interface {
	// Instances describes the instances of ids that exist; an ID missing
	// from the answer is an instance that does not exist.
	Instances(ctx context.Context, ids []string) (map[string]cloud.InstanceState, error)
	// ActiveEvents lists the Inquiring and Executing system events of the
	// instances, of the types given.
	ActiveEvents(ctx context.Context, ids []string, types ...string) ([]cloud.SystemEvent, error)
	// DiskErrors lists the disks' ErrorDetected events in effect.
	DiskErrors(ctx context.Context, ids []string, now time.Time) ([]cloud.SystemEvent, error)
	// AcceptEvent gives the owner's consent to an Inquiring event.
	AcceptEvent(ctx context.Context, id string) error
}

// Config configures the controller.
type Config struct {
	// DriverName is the CSI driver whose volumes are watched.
	DriverName string
	// Namespace is the driver's namespace (its CSIStorageCapacity objects).
	Namespace string
	Core      kubernetes.Interface
	Dynamic   dynamic.Interface
	// Cloud confirms instances with ECS; nil where there is no cloud, and
	// then a Node deleted for longer than GracePeriod counts as gone.
	Cloud Cloud
	// SelfInstance is the ECS instance the controller runs on, "" unknown:
	// a witness that ECS answers for this account and region.
	SelfInstance string
	// Region is the ECS region the controller asks about: a Node's
	// providerID counts only when it names this region ("" trusts no
	// providerID, only the instances the node drivers recorded).
	Region   string
	Recorder record.EventRecorder
	// GracePeriod is how long a node must stay deleted (or its instance
	// released) before its volumes count as lost; default 2 minutes.
	GracePeriod time.Duration
	// Interval is how often the controller checks again; default 10s.
	Interval time.Duration
	// EventInterval is how often ECS is asked for damaged disks; default 1m.
	EventInterval time.Duration
	// AcceptDiskEvents gives consent to the Inquiring event of a damaged
	// disk once no volume uses it (AcceptInquiredSystemEvent).
	AcceptDiskEvents bool
	Clock            clock.WithTicker
}

// Controller watches the driver's PVs and the nodes they are on.
type Controller struct {
	cfg     Config
	nodes   corelisters.NodeLister
	pvs     corelisters.PersistentVolumeLister
	classes storagelisters.StorageClassLister
	// capacities are the CSIStorageCapacity objects in the driver's namespace.
	capacities storagelisters.CSIStorageCapacityLister
	disks      cache.GenericLister
	synced     []cache.InformerSynced
	trigger    chan struct{}
	factory    informers.SharedInformerFactory
	nsf        informers.SharedInformerFactory
	dfactory   dynamicinformer.DynamicSharedInformerFactory

	mu sync.Mutex
	// suspect is when a node was first seen deleted or its instance
	// released, by node name.
	suspect map[string]time.Time
	// instances remembers each node's instance from its providerID while
	// the Node exists.
	instances map[string]string
	// told is the events already emitted: "uid/reason".
	told map[string]bool
	// verdicts is the last verdict logged per node.
	verdicts map[string]string
	// releasedSince is when ECS first did not list an instance (trusted
	// answers only); final are the instances confirmed released and
	// acted on, not asked about again.
	releasedSince map[string]time.Time
	final         map[string]bool
	// accepted are the events accepted.
	accepted map[string]bool
	// claimUsers are, by lost claim, the pods that used it when the
	// controller deleted it; done are the PVs whose recovery is over.
	claimUsers map[types.UID]map[types.UID]bool
	done       map[types.UID]bool
	// lastEvents is when ECS was last asked for damaged disks.
	lastEvents time.Time
}

// New builds the controller; Run starts it.
func New(cfg Config) *Controller {
	if cfg.GracePeriod == 0 {
		cfg.GracePeriod = 2 * time.Minute
	}
	if cfg.Interval == 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.EventInterval == 0 {
		cfg.EventInterval = time.Minute
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	c := &Controller{cfg: cfg, trigger: make(chan struct{}, 1),
		suspect: map[string]time.Time{}, instances: map[string]string{}, told: map[string]bool{}, verdicts: map[string]string{}, releasedSince: map[string]time.Time{}, final: map[string]bool{}, accepted: map[string]bool{},
		claimUsers: map[types.UID]map[types.UID]bool{}, done: map[types.UID]bool{}}
	c.factory = informers.NewSharedInformerFactory(cfg.Core, 0)
	nodes, pvs, classes := c.factory.Core().V1().Nodes(), c.factory.Core().V1().PersistentVolumes(), c.factory.Storage().V1().StorageClasses()
	c.nodes, c.pvs = nodes.Lister(), pvs.Lister()
	c.classes = classes.Lister()
	c.nsf = informers.NewSharedInformerFactoryWithOptions(cfg.Core, 0, informers.WithNamespace(cfg.Namespace))
	caps := c.nsf.Storage().V1().CSIStorageCapacities()
	c.capacities = caps.Lister()
	c.dfactory = dynamicinformer.NewDynamicSharedInformerFactory(cfg.Dynamic, 0)
	disks := c.dfactory.ForResource(v1alpha1.GroupVersionResource)
	c.disks = disks.Lister()
	poke := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { c.poke() }, UpdateFunc: func(any, any) { c.poke() }, DeleteFunc: func(any) { c.poke() },
	}
	for _, inf := range []cache.SharedIndexInformer{nodes.Informer(), pvs.Informer(), classes.Informer(), disks.Informer(), caps.Informer()} {
		inf.AddEventHandler(poke)
		c.synced = append(c.synced, inf.HasSynced)
	}
	return c
}

func (c *Controller) poke() {
	select {
	case c.trigger <- struct{}{}:
	default:
	}
}

// Start starts the informers and waits for their caches; they stop when
// ctx ends.
func (c *Controller) Start(ctx context.Context) error {
	c.factory.Start(ctx.Done())
	c.nsf.Start(ctx.Done())
	c.dfactory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return errors.New("the informers did not sync")
	}
	return nil
}

// Run watches until ctx ends; it checks on every change and every Interval.
func (c *Controller) Run(ctx context.Context) error {
	defer c.factory.Shutdown()
	defer c.nsf.Shutdown()
	defer c.dfactory.Shutdown()
	if err := c.Start(ctx); err != nil {
		return err
	}
	klog.InfoS("Recovery controller started", "driver", c.cfg.DriverName, "gracePeriod", c.cfg.GracePeriod, "cloud", c.cfg.Cloud != nil)
	t := c.cfg.Clock.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		if err := c.Sync(ctx); err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Recovery check failed; retrying", "retryIn", c.cfg.Interval)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		case <-c.trigger:
		}
	}
}

// Sync checks every node that holds the driver's volumes once, the
// volumes whose data their node found gone, and, every EventInterval, the
// disks ECS reports damaged.
func (c *Controller) Sync(ctx context.Context) error {
	errs := []error{c.syncNodes(ctx), c.syncLost(ctx)}
	now := c.cfg.Clock.Now()
	c.mu.Lock()
	due := now.Sub(c.lastEvents) >= c.cfg.EventInterval
	c.mu.Unlock()
	if due {
		err := c.syncDamage(ctx)
		if err == nil {
			c.mu.Lock()
			c.lastEvents = now
			c.mu.Unlock()
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// tellOnce records an event on obj unless the same reason was already told
// for the same object (by UID).
func (c *Controller) tellOnce(obj runtime.Object, kind, reason, format string, a ...any) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return
	}
	key := string(m.GetUID()) + "/" + reason
	c.mu.Lock()
	if len(c.told) >= maxTold {
		// Most of these objects are gone; forgetting them all at once
		// costs at most one repeated event per object still there.
		c.told = map[string]bool{}
	}
	seen := c.told[key]
	c.told[key] = true
	c.mu.Unlock()
	if seen || c.cfg.Recorder == nil {
		return
	}
	msg := fmt.Sprintf(format, a...)
	if len(msg) > maxMessage {
		msg = msg[:maxMessage]
	}
	c.cfg.Recorder.Event(obj, kind, reason, msg)
	klog.InfoS("Event", "object", klog.KObj(m), "reason", reason, "message", msg)
}

// maxMessage bounds an event's message.
const maxMessage = 1024

// maxTold bounds the memory of events told.
const maxTold = 100000
