// Azure Managed Redis: the nodes' shared call state (docs/deploy.md "Scale-out").
//
// - One cluster and its one database, which must be named 'default'.
// - The keys are control state, not cache: evictionPolicy NoEviction (a full database
//   refuses writes instead of silently dropping a live call's record), no persistence
//   (call records live minutes; a restart loses only calls that are ending anyway).
// - clusteringPolicy EnterpriseCluster: one endpoint speaking the plain Redis protocol,
//   so the app's client needs no cluster mode (OSSCluster would require one).
// - TLS only (clientProtocol Encrypted, minimum TLS 1.2), port 10000.
// - Entra ID by default: access keys disabled and the app identity gets the built-in
//   'default' access policy. accessKeysEnabled = true (redisAuth = 'key' in main.bicep)
//   turns access keys on, for clients without Entra support; the key then goes to Key
//   Vault (modules/keyvault.bicep) and reaches the app as REDIS_PASSWORD.
// - Public endpoint: the Container Apps environment here has no VNet. Add a private
//   endpoint when it is VNet-integrated.
//
// API version: Microsoft.Cache/redisEnterprise@2025-04-01 (stable) for the cluster, the
// database and the access policy assignment. Shapes taken from the published spec
// (Azure/azure-rest-api-specs specification/redisenterprise/.../stable/2025-04-01:
// redisenterprise.json and the examples RedisEnterpriseCreate.json,
// RedisEnterpriseDatabasesCreate.json, RedisEnterpriseAccessPolicyAssignmentCreateUpdate.json)
// and the Bicep reference on learn.microsoft.com (azure/templates/microsoft.cache/
// 2025-04-01/redisenterprise/databases/accesspolicyassignments). The same three resources
// appear in public Bicep (Azure/bicep-registry-modules avm/res/cache/redis-enterprise,
// dotnet/aspire test snapshots). Not compiled or deployed here.

param name string
param location string
param tags object = {}

@description('Azure Managed Redis SKU, e.g. Balanced_B0, Balanced_B1, Balanced_B3 (price and memory grow with the number).')
param skuName string = 'Balanced_B1'

@description('Object (principal) id of the app identity: gets the "default" data access policy.')
param principalId string

@description('Allow access-key authentication (REDIS_AUTH=key). Off: Entra ID only.')
param accessKeysEnabled bool = false

resource cluster 'Microsoft.Cache/redisEnterprise@2025-04-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: skuName
  }
  properties: {
    minimumTlsVersion: '1.2'
    // Replicated: every live call's record is here.
    highAvailability: 'Enabled'
  }
}

resource database 'Microsoft.Cache/redisEnterprise/databases@2025-04-01' = {
  parent: cluster
  name: 'default'
  properties: {
    clientProtocol: 'Encrypted'
    port: 10000
    clusteringPolicy: 'EnterpriseCluster'
    evictionPolicy: 'NoEviction'
    accessKeysAuthentication: accessKeysEnabled ? 'Enabled' : 'Disabled'
    persistence: {
      aofEnabled: false
      rdbEnabled: false
    }
  }
}

// The assignment's name allows only letters and digits (pattern ^[A-Za-z0-9]{1,60}$ in
// the 2025-04-01 spec), so the principal id without its dashes.
resource appAccess 'Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments@2025-04-01' = {
  parent: database
  name: replace(principalId, '-', '')
  properties: {
    accessPolicyName: 'default'
    user: {
      objectId: principalId
    }
  }
}

output name string = cluster.name
@description('The cluster\'s DNS name (REDIS_URL host).')
output hostName string = cluster.properties.hostName
output port int = 10000
@description('rediss://<host>:10000, without credentials (Entra ID, or REDIS_PASSWORD for keys).')
output url string = 'rediss://${cluster.properties.hostName}:10000'
