// Azure Communication Services: create one, or use an existing one, in this module's
// resource group; optionally grant the app identity a role on it (Call Automation with
// managed identity, i.e. ACS_ENDPOINT without a connection string).
//
// API versions: Microsoft.Communication/communicationServices@2023-04-01 (stable;
// `dataLocation` is create-only; `hostName` and `immutableResourceId` are read-only),
// Microsoft.Authorization/roleAssignments@2022-04-01.
//
// The least-privileged role for Call Automation with Entra ID is NOT verified
// (protocols.md §9 q7). The default is Contributor; "Communication and Email Service
// Owner" (09976791-48a7-449e-bb21-39d1a415f350) is the narrower built-in candidate.

param create bool
param name string
param dataLocation string
param tags object = {}

param grantRole bool
param principalId string
@description('Role definition GUID granted to the app identity on the ACS resource.')
param roleDefinitionId string

resource created 'Microsoft.Communication/communicationServices@2023-04-01' = if (create) {
  name: name
  location: 'global'
  tags: tags
  properties: {
    dataLocation: dataLocation
  }
}

// Read back by name: the new resource, or the existing one.
resource acs 'Microsoft.Communication/communicationServices@2023-04-01' existing = {
  name: name
}

resource callAutomation 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantRole) {
  name: guid(acs.id, principalId, roleDefinitionId)
  scope: acs
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleDefinitionId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    created
  ]
}

output id string = acs.id
output name string = acs.name
@description('https://<name>.<region>.communication.azure.com (ACS_ENDPOINT).')
output endpoint string = 'https://${acs.properties.hostName}'
@description('The GUID that ACS puts in the `aud` claim of its Call Automation JWTs (ACS_RESOURCE_ID).')
output immutableResourceId string = acs.properties.immutableResourceId
