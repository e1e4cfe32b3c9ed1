// The voicebridge Container App.
//
// - External HTTPS ingress to port 8000. Container Apps ingress carries WebSocket
//   upgrades over HTTP/1.1; `transport: 'http'` (HTTP/1.1 to the container) is what
//   uvicorn speaks. Plain http is redirected (allowInsecure: false).
// - No session affinity: Container Apps sticky sessions are cookie-based and ACS
//   sends no cookies, so they cannot pin a call to a replica (docs/deploy.md).
// - Probes on the app's health routes: startup and liveness on /healthz, readiness on
//   /readyz (turns 503 while the replica drains).
// - terminationGracePeriodSeconds from main.bicep: DRAIN_GRACE_S plus a margin.
// - Secrets are Key Vault references only (keyVaultUrl + identity), passed in from
//   main.bicep; env entries refer to them with secretRef.
//
// API version: Microsoft.App/containerApps@2024-03-01 (stable; template
// terminationGracePeriodSeconds, secrets keyVaultUrl/identity, registries identity).

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

param targetPort int = 8000
param cpuCores string = '1.0'
param memory string = '2Gi'

@minValue(0)
param minReplicas int = 1
@minValue(1)
param maxReplicas int = 1
@description('HTTP scale rule: concurrent requests (calls hold one WebSocket each) per replica.')
param scaleConcurrentRequests int = 20

@allowed([
  'Single'
  'Multiple'
])
param revisionsMode string = 'Single'
param revisionSuffix string = ''

@description('Seconds between SIGTERM and SIGKILL; must exceed DRAIN_GRACE_S.')
param terminationGracePeriodSeconds int

resource app 'Microsoft.App/containerApps@2024-03-01' = {
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
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            name: 'http-concurrency'
            http: {
              metadata: {
                concurrentRequests: string(scaleConcurrentRequests)
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
