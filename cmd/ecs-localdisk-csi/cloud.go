package main

import (
	"context"
	"sync"
	"time"

	"github.com/ecs-localdisk/ecs-localdisk-csi/pkg/cloud"
)

// lazyAPI builds the ECS API client on first use: the region (unless
// given) and the RAM role come from the metadata server, which may be
// unreachable at start.
type lazyAPI struct {
	credentialsFile, ramRole, endpoint, region string
	md                                         *cloud.Metadata
	onRequest                                  func(action, outcome string)

	mu  sync.Mutex
	api *cloud.API
}

func (l *lazyAPI) get(ctx context.Context) (*cloud.API, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.api != nil {
		return l.api, nil
	}
	region := l.region
	if region == "" {
		in, err := l.md.Instance(ctx)
		if err != nil {
			return nil, err
		}
		region = in.Region
	}
	creds, err := cloud.NewCredentialProvider(cloud.CredentialConfig{File: l.credentialsFile, RAMRole: l.ramRole, Metadata: l.md})
	if err != nil {
		return nil, err
	}
	api, err := cloud.NewAPI(cloud.APIConfig{Region: region, Endpoint: l.endpoint, Credentials: creds, OnRequest: l.onRequest})
	if err != nil {
		return nil, err
	}
	l.api = api
	return api, nil
}

func (l *lazyAPI) InstanceDisks(ctx context.Context, id string) ([]cloud.CloudDisk, error) {
	api, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return api.InstanceDisks(ctx, id)
}

func (l *lazyAPI) InstanceType(ctx context.Context, name string) (cloud.InstanceType, error) {
	api, err := l.get(ctx)
	if err != nil {
		return cloud.InstanceType{}, err
	}
	return api.InstanceType(ctx, name)
}

func (l *lazyAPI) Instances(ctx context.Context, ids []string) (map[string]cloud.InstanceState, error) {
	api, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return api.Instances(ctx, ids)
}

func (l *lazyAPI) ActiveEvents(ctx context.Context, ids []string, types ...string) ([]cloud.SystemEvent, error) {
	api, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return api.ActiveEvents(ctx, ids, types...)
}

func (l *lazyAPI) DiskErrors(ctx context.Context, ids []string, now time.Time) ([]cloud.SystemEvent, error) {
	api, err := l.get(ctx)
	if err != nil {
		return nil, err
	}
	return api.DiskErrors(ctx, ids, now)
}

func (l *lazyAPI) AcceptEvent(ctx context.Context, id string) error {
	api, err := l.get(ctx)
	if err != nil {
		return err
	}
	return api.AcceptEvent(ctx, id)
}
