// Key Vault in RBAC mode holding every secret the app reads. The Container App refers
// to these secrets by URL (keyVaultUrl + the user-assigned identity); no secret value
// is ever written into the Container App resource.
//
// Values come from the resources themselves where possible (ACS connection string,
// Foundry key, App Insights connection string, Redis URL and access key), or from
// @secure() deployment parameters (Event Grid shared secret, call-URL keys, scale-metric
// token). A secret is created only when the configuration uses it.
//
// REDIS_URL is a SecretStr in the app (a URL may carry a password), so it goes through
// Key Vault like every secret setting, although the URL written here has none.
//
// API versions: Microsoft.KeyVault/vaults@2023-07-01, .../secrets@2023-07-01,
//   Microsoft.Communication/communicationServices@2023-04-01 (listKeys),
//   Microsoft.CognitiveServices/accounts@2025-06-01 (listKeys),
//   Microsoft.Cache/redisEnterprise(/databases)@2025-04-01 (database listKeys),
//   Microsoft.Insights/components@2020-02-02, Microsoft.Authorization/roleAssignments@2022-04-01.

param name string
param location string
param tags object = {}

@description('Principal (object) id of the app identity: gets Key Vault Secrets User on this vault.')
param principalId string

@description('Secret names, shared with main.bicep (the Container App secret refs).')
param secretNames object

param storeAcsConnectionString bool
param acsName string
param acsResourceGroup string

param storeVoiceLiveKey bool
param foundryName string
param foundryResourceGroup string

param appInsightsName string

@secure()
param eventGridSharedSecret string = ''

@secure()
param callUrlSecret string = ''

@description('CALL_URL_KEYS: required, every node must verify the URLs every other node signed.')
@secure()
@minLength(1)
param callUrlKeys string

@description('SCALE_METRIC_TOKEN: bearer token of GET /api/scale-metric (the scale rule).')
@secure()
@minLength(16)
param scaleMetricToken string

@description('OUTBOUND_API_KEYS: bearer keys of POST /api/calls ("" = none).')
@secure()
param outboundApiKeys string = ''

@description('The profiles file (PROFILES_FILE), mounted into the app ("" = none).')
@secure()
param profilesYaml string = ''

@description('REDIS_URL (no credentials in it).')
param redisUrl string

@description('Store the Redis access key as REDIS_PASSWORD (redisAuth = key).')
param storeRedisKey bool
param redisName string

// Key Vault Secrets User: read secret contents (built-in role).
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    publicNetworkAccess: 'Enabled'
  }
}

resource acs 'Microsoft.Communication/communicationServices@2023-04-01' existing = {
  name: acsName
  scope: resourceGroup(acsResourceGroup)
}

resource foundry 'Microsoft.CognitiveServices/accounts@2025-06-01' existing = {
  name: foundryName
  scope: resourceGroup(foundryResourceGroup)
}

resource redisCluster 'Microsoft.Cache/redisEnterprise@2025-04-01' existing = {
  name: redisName
}

resource redisDatabase 'Microsoft.Cache/redisEnterprise/databases@2025-04-01' existing = {
  parent: redisCluster
  name: 'default'
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource acsConnectionString 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (storeAcsConnectionString) {
  parent: vault
  name: secretNames.acsConnectionString
  properties: {
    value: acs.listKeys().primaryConnectionString
    contentType: 'ACS connection string'
  }
}

resource voiceLiveKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (storeVoiceLiveKey) {
  parent: vault
  name: secretNames.voiceLiveApiKey
  properties: {
    value: foundry.listKeys().key1
    contentType: 'Voice Live (Foundry) API key'
  }
}

resource eventGridSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(eventGridSharedSecret)) {
  parent: vault
  name: secretNames.eventGridSharedSecret
  properties: {
    value: eventGridSharedSecret
    contentType: 'Event Grid webhook shared secret'
  }
}

resource callUrl 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(callUrlSecret)) {
  parent: vault
  name: secretNames.callUrlSecret
  properties: {
    value: callUrlSecret
    contentType: 'HMAC key for per-call URLs'
  }
}

resource callUrlKeyRing 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: secretNames.callUrlKeys
  properties: {
    value: callUrlKeys
    contentType: 'Per-call URL token keys (kid:base64key, first signs)'
  }
}

resource scaleMetric 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: secretNames.scaleMetricToken
  properties: {
    value: scaleMetricToken
    contentType: 'Bearer token of GET /api/scale-metric'
  }
}

resource outboundKeys 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(outboundApiKeys)) {
  parent: vault
  name: secretNames.outboundApiKeys
  properties: {
    value: outboundApiKeys
    contentType: 'Bearer keys of POST /api/calls (comma-separated)'
  }
}

resource profiles 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(profilesYaml)) {
  parent: vault
  name: secretNames.profilesYaml
  properties: {
    value: profilesYaml
    contentType: 'voicebridge profiles file (YAML or JSON)'
  }
}

resource redisUrlSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: secretNames.redisUrl
  properties: {
    value: redisUrl
    contentType: 'Redis URL (no credentials)'
  }
}

resource redisKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (storeRedisKey) {
  parent: vault
  name: secretNames.redisPassword
  properties: {
    value: redisDatabase.listKeys().primaryKey
    contentType: 'Azure Managed Redis access key'
  }
}

resource appInsightsConnectionString 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: secretNames.appInsightsConnectionString
  properties: {
    value: appInsights.properties.ConnectionString
    contentType: 'Application Insights connection string'
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

output name string = vault.name
@description('https://<vault>.vault.azure.net/ (with the trailing slash).')
output vaultUri string = vault.properties.vaultUri
