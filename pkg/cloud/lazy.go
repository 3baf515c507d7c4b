package cloud

import (
	"context"
	"sync"
	"time"
)

// LazyAPI builds the ECS API client on first use: the region (unless
// given) and the RAM role come from the metadata server, which may be
// unreachable at start. Both the node driver and the cluster component
// use it.
type LazyAPI struct {
	CredentialsFile, RAMRole, Endpoint, Region string
	Metadata                                   *Metadata
	OnRequest                                  func(action, outcome string)

	mu  sync.Mutex
	api *API
}

func (l *LazyAPI) get(ctx context.Context) (*API, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.api != nil {
		return l.api, nil
	}
	region := l.Region
	if region == "" {
		in, err := l.Metadata.Instance(ctx)
		if err != nil {
			return nil, err
		}
		region = in.Region
	}
	creds, err := NewCredentialProvider(CredentialConfig{File: l.CredentialsFile, RAMRole: l.RAMRole, Metadata: l.Metadata})
	if err != nil {
		return nil, err
	}
	api, err := NewAPI(APIConfig{Region: region, Endpoint: l.Endpoint, Credentials: creds, OnRequest: l.OnRequest})
	if err != nil {
		return nil, err
	}
	l.api = api
	return api, nil
}

func (l *LazyAPI) InstanceDisks(ctx context.Context, id string) ([]CloudDisk, error) {
	api, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return api.InstanceDisks(ctx, id)
}

func (l *LazyAPI) InstanceType(ctx context.Context, name string) (InstanceType, error) {
	api, err := l.get(ctx)
	if err != nil {
		return InstanceType{}, err
	}
	return api.InstanceType(ctx, name)
}

func (l *LazyAPI) Instances(ctx context.Context, ids []string) (map[string]InstanceState, error) {
	api, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return api.Instances(ctx, ids)
}

func (l *LazyAPI) ActiveEvents(ctx context.Context, ids []string, types ...string) ([]SystemEvent, error) {
	api, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return api.ActiveEvents(ctx, ids, types...)
}

func (l *LazyAPI) DiskErrors(ctx context.Context, ids []string, now time.Time) ([]SystemEvent, error) {
	api, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return api.DiskErrors(ctx, ids, now)
}

func (l *LazyAPI) AcceptEvent(ctx context.Context, id string) error {
	api, err := l.get(ctx)
	if err != nil {
		return err
	}
	return api.AcceptEvent(ctx, id)
}
