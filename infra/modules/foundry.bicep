// The Foundry (AI Services) resource that hosts Voice Live: create one, or use an
// existing one in this module's resource group, and give the app identity what
// Entra ID calls need:
//   - Cognitive Services User  (a97b65f3-24c7-4388-baec-2e87135dc908): Voice Live with Entra ID;
//   - Azure AI User, renamed "Foundry User" (53ca6127-db72-4b80-b1b0-d745d6d5456d): agent mode.
// (protocols.md §6.2: "Roles: Cognitive Services User plus Foundry User".)
//
// Agent mode also needs a Foundry project and an agent: create them in the Foundry
// portal and pass their names (docs/deploy.md). This module does not create projects.
//
// API versions: Microsoft.CognitiveServices/accounts@2025-06-01 (kind AIServices,
// allowProjectManagement), Microsoft.Authorization/roleAssignments@2022-04-01.

param create bool
param name string
param location string
param tags object = {}

@description('Turn off key auth on a NEW account (Entra ID only). Ignored for an existing account.')
param disableLocalAuth bool

param principalId string

var roles = [
  'a97b65f3-24c7-4388-baec-2e87135dc908' // Cognitive Services User
  '53ca6127-db72-4b80-b1b0-d745d6d5456d' // Azure AI User / Foundry User
]

resource created 'Microsoft.CognitiveServices/accounts@2025-06-01' = if (create) {
  name: name
  location: location
  tags: tags
  kind: 'AIServices'
  sku: {
    name: 'S0'
  }
  properties: {
    customSubDomainName: name
    allowProjectManagement: true
    publicNetworkAccess: 'Enabled'
    disableLocalAuth: disableLocalAuth
  }
}

resource account 'Microsoft.CognitiveServices/accounts@2025-06-01' existing = {
  name: name
}

resource access 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in roles: {
    name: guid(account.id, principalId, role)
    scope: account
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
    dependsOn: [
      created
    ]
  }
]

output id string = account.id
output name string = account.name
@description('The Voice Live endpoint: https://<custom subdomain>.services.ai.azure.com/')
output endpoint string = 'https://${account.properties.customSubDomainName}.services.ai.azure.com/'
