// The voicebridge Container App.
//
// - External HTTPS ingress to port 8000. Container Apps ingress carries WebSocket
//   upgrades over HTTP/1.1; `transport: 'http'` (HTTP/1.1 to the container) is what
//   uvicorn speaks. Plain http is redirected (allowInsecure: false).
// - No session affinity: Container Apps sticky sessions are cookie-based and ACS
//   sends no cookies, so they cannot pin a call to a replica. None is needed: any
//   replica takes any request (shared state in Redis, self-contained signed URLs), and a
//   call lives on the replica its media WebSocket lands on (docs/deploy.md "Scale-out").
// - Probes on the app's health routes: startup and liveness on /healthz, readiness on
//   /readyz (turns 503 while the replica drains). Readiness period 5 s x failureThreshold
//   2 is what DRAIN_ROUTE_SETTLE_S (main.bicep) waits out.
// - Scale: a KEDA metrics-api rule on the app's own GET /api/scale-metric (live calls
//   across all replicas, from Redis) plus a CPU rule as a safety net. No HTTP rule: it
//   counts requests per 15 s, and a call is one long WebSocket.
// - terminationGracePeriodSeconds from main.bicep: settle + migrate deadline + drain
//   grace + margin.
// - Secrets are Key Vault references only (keyVaultUrl + identity), passed in from
//   main.bicep; env entries and the scale rule refer to them by name.
//
// API version: Microsoft.App/containerApps@2025-01-01 (stable): template
// terminationGracePeriodSeconds, secrets keyVaultUrl/identity, registries identity, and
// scale.pollingInterval / scale.cooldownPeriod (present in the 2025-01-01 spec example
// ContainerApps_CreateOrUpdate.json, absent from the 2024-03-01 one used before).

param name string
param location string
param tags object = {}

param environmentId string
@description('Resource id of the user-assigned identity (Key Vault refs, ACR pull, Azure SDK credential).')
param identityId string

param image string
@description('Registry login server to pull from with the identity ("" = public image).')
param registryServer string = ''

@description('Container env entries: {name, value} or {name, secretRef}.')
param env array
@description('Container App secrets: {name, keyVaultUrl, identity} only.')
param secrets array
@description('Container App secrets (of secrets) mounted read-only as files in /mnt/voicebridge: [{secretRef, path}]; [] = none.')
param secretFiles array = []

param targetPort int = 8000
param cpuCores string = '1.0'
param memory string = '2Gi'

@minValue(2)
param minReplicas int = 2
@minValue(2)
param maxReplicas int = 30

@description('Scale rule target: live calls per replica (KEDA metrics-api targetValue).')
@minValue(1)
param callsPerReplica int = 60
@description('URL KEDA polls for {"activeCalls": N, ...}: the app\'s own /api/scale-metric.')
param scaleMetricUrl string
@description('Name of the Container App secret holding the scale-metric bearer token.')
param scaleMetricSecretName string
@description('CPU safety-net rule: average utilisation (%) that adds replicas.')
@minValue(1)
@maxValue(100)
param cpuScalePercent int = 70
@description('KEDA polling interval (s); Container Apps defaults to 30.')
@minValue(1)
param pollingIntervalS int = 15
@description('KEDA cooldown period (s); Container Apps defaults to 300.')
@minValue(0)
param cooldownPeriodS int = 300

@allowed([
  'Single'
  'Multiple'
])
param revisionsMode string = 'Single'
param revisionSuffix string = ''

@description('Seconds between SIGTERM and SIGKILL; must cover the whole drain.')
param terminationGracePeriodSeconds int

resource app 'Microsoft.App/containerApps@2025-01-01' = {
  name: name
  location: location
  tags: tags
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    environmentId: environmentId
    workloadProfileName: 'Consumption'
    configuration: {
      activeRevisionsMode: revisionsMode
      ingress: {
        external: true
        targetPort: targetPort
        transport: 'http'
        allowInsecure: false
        traffic: [
          {
            latestRevision: true
            weight: 100
          }
        ]
      }
      registries: empty(registryServer)
        ? []
        : [
            {
              server: registryServer
              identity: identityId
            }
          ]
      secrets: secrets
    }
    template: {
      revisionSuffix: empty(revisionSuffix) ? null : revisionSuffix
      terminationGracePeriodSeconds: terminationGracePeriodSeconds
      containers: [
        {
          name: 'voicebridge'
          image: image
          resources: {
            cpu: json(cpuCores)
            memory: memory
          }
          env: env
          volumeMounts: empty(secretFiles)
            ? []
            : [
                {
                  volumeName: 'secret-files'
                  mountPath: '/mnt/voicebridge'
                }
              ]
          probes: [
            {
              type: 'Startup'
              httpGet: {
                path: '/healthz'
                port: targetPort
              }
              initialDelaySeconds: 1
              periodSeconds: 3
              timeoutSeconds: 2
              failureThreshold: 10
            }
            {
              type: 'Liveness'
              httpGet: {
                path: '/healthz'
                port: targetPort
              }
              periodSeconds: 10
              timeoutSeconds: 3
              failureThreshold: 3
            }
            {
              type: 'Readiness'
              httpGet: {
                path: '/readyz'
                port: targetPort
              }
              periodSeconds: 5
              timeoutSeconds: 3
              failureThreshold: 2
              successThreshold: 1
            }
          ]
        }
      ]
      volumes: empty(secretFiles)
        ? []
        : [
            {
              name: 'secret-files'
              storageType: 'Secret'
              secrets: secretFiles
            }
          ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        pollingInterval: pollingIntervalS
        cooldownPeriod: cooldownPeriodS
        rules: [
          // Desired replicas = ceil(activeCalls / callsPerReplica). KEDA metrics-api
          // trigger: url, valueLocation (GJSON path), targetValue; authMode 'bearer' with
          // the auth parameter 'token' sends "Authorization: Bearer <token>" (keda.sh
          // docs, metrics-api, v2.13+). That Container Apps passes authMode and maps the
          // 'token' triggerParameter this way is not verified.
          {
            name: 'active-calls'
            custom: {
              type: 'metrics-api'
              metadata: {
                url: scaleMetricUrl
                valueLocation: 'activeCalls'
                targetValue: string(callsPerReplica)
                authMode: 'bearer'
              }
              auth: [
                {
                  secretRef: scaleMetricSecretName
                  triggerParameter: 'token'
                }
              ]
            }
          }
          // Safety net if the metric route fails or calls cost more CPU than planned.
          // CPU utilisation is noisy on shared vCPUs (docs/performance.md): not the only
          // signal.
          {
            name: 'cpu-safety'
            custom: {
              type: 'cpu'
              metadata: {
                type: 'Utilization'
                value: string(cpuScalePercent)
              }
            }
          }
        ]
      }
    }
  }
}

output id string = app.id
output name string = app.name
output fqdn string = app.properties.configuration.ingress.fqdn
output latestRevisionName string = app.properties.latestRevisionName
