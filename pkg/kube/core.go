package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
)

// The node driver talks to the core API group through a REST client that
// knows only core/v1, not through client-go's clientset: the clientset
// links and registers every API group of Kubernetes at start, which nearly
// doubled the node driver's idle memory for the three reads and the events
// it needs (BenchmarkIdleRSS in tests/integration).

// Core reads the core objects the mirror refers to.
type Core interface {
	Node(ctx context.Context, name string) (*corev1.Node, error)
	PersistentVolume(ctx context.Context, name string) (*corev1.PersistentVolume, error)
	PersistentVolumeClaim(ctx context.Context, namespace, name string) (*corev1.PersistentVolumeClaim, error)
}

// Scheme knows core/v1 alone: the node driver's events are about Nodes,
// PVs and claims, always given as references.
var Scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}()

// CoreClient is Core and the sink of events, over one REST client of
// core/v1 with cfg's rate limits.
type CoreClient struct{ c rest.Interface }

// NewCoreClient builds the REST client of core/v1 from cfg.
func NewCoreClient(cfg *rest.Config) (*CoreClient, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.APIPath = "/api"
	c.NegotiatedSerializer = serializer.NewCodecFactory(Scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("core/v1 client: %w", err)
	}
	return &CoreClient{c: rc}, nil
}

func (k *CoreClient) Node(ctx context.Context, name string) (*corev1.Node, error) {
	return get[corev1.Node](ctx, k.c, "nodes", "", name)
}

func (k *CoreClient) PersistentVolume(ctx context.Context, name string) (*corev1.PersistentVolume, error) {
	return get[corev1.PersistentVolume](ctx, k.c, "persistentvolumes", "", name)
}

func (k *CoreClient) PersistentVolumeClaim(ctx context.Context, namespace, name string) (*corev1.PersistentVolumeClaim, error) {
	return get[corev1.PersistentVolumeClaim](ctx, k.c, "persistentvolumeclaims", namespace, name)
}

// get reads the object name of resource, in namespace unless it is "",
// in protobuf as client-go's typed clients read core objects.
func get[T any, P interface {
	*T
	runtime.Object
}](ctx context.Context, c rest.Interface, resource, namespace, name string) (*T, error) {
	var o T
	err := c.Get().UseProtobufAsDefault().NamespaceIfScoped(namespace, namespace != "").Resource(resource).Name(name).
		VersionedParams(&metav1.GetOptions{}, metav1.ParameterCodec).Do(ctx).Into(P(&o))
	if err != nil {
		return nil, err
	}
	return &o, nil
}

// EventSink is where a record.EventBroadcaster writes the events.
func (k *CoreClient) EventSink() record.EventSink { return eventSink{k.c} }

// eventSink writes events as client-go's typed EventSinkImpl does: in the
// event's own namespace.
type eventSink struct{ c rest.Interface }

func (s eventSink) Create(e *corev1.Event) (*corev1.Event, error) {
	var out corev1.Event
	err := s.c.Post().NamespaceIfScoped(e.Namespace, e.Namespace != "").Resource("events").
		Body(e).Do(context.TODO()).Into(&out)
	return &out, err
}

func (s eventSink) Update(e *corev1.Event) (*corev1.Event, error) {
	var out corev1.Event
	err := s.c.Put().NamespaceIfScoped(e.Namespace, e.Namespace != "").Resource("events").Name(e.Name).
		Body(e).Do(context.TODO()).Into(&out)
	return &out, err
}

func (s eventSink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	var out corev1.Event
	err := s.c.Patch(types.StrategicMergePatchType).NamespaceIfScoped(e.Namespace, e.Namespace != "").
		Resource("events").Name(e.Name).Body(data).Do(context.TODO()).Into(&out)
	return &out, err
}

// RESTConfig is the client configuration from kubeconfig, else the pod's
// service account, with the client's rate limits and userAgent.
func RESTConfig(kubeconfig string, qps float64, burst int, userAgent string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = float32(qps), burst
	cfg.UserAgent = userAgent
	return cfg, nil
}
