// The Container Apps environment (workload-profiles environment with the
// Consumption profile), logging to the Log Analytics workspace.
//
// API version: Microsoft.App/managedEnvironments@2024-03-01 (stable).
// `properties.defaultDomain` is known as soon as the environment exists, so the app's
// public URL (https://<app>.<defaultDomain>) can be computed before the app is created.

param name string
param location string
param tags object = {}
param workspaceName string

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' existing = {
  name: workspaceName
}

resource environment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: workspace.properties.customerId
        sharedKey: workspace.listKeys().primarySharedKey
      }
    }
    workloadProfiles: [
      {
        name: 'Consumption'
        workloadProfileType: 'Consumption'
      }
    ]
    zoneRedundant: false
  }
}

output id string = environment.id
output name string = environment.name
output defaultDomain string = environment.properties.defaultDomain
