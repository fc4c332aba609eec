import os
from azure.communication.administration import CommunicationIdentityClient

try:
   print('Azure Communication Services - User Access Tokens Quickstart')
   # Quickstart code goes here
   # This code demonstrates how to fetch your connection string
   # from an environment variable.
   connection_string = os.environ['COMMUNICATION_SERVICES_CONNECTION_STRING']

   # Instantiate the identity client
   client = CommunicationIdentityClient.from_connection_string(connection_string)

   user = client.create_user()
   print("\nCreated a user with ID: " + user.identifier + ":")

   # Issue an access token with the "voip" scope for a new user
   token_result = client.issue_token(user, ["voip"])
   expires_on = token_result.expires_on.strftime('%d/%m/%y %I:%M %S %p')
   print("\nIssued a token with 'voip' scope that expires at " + expires_on + ":")
   print(token_result.token)

   client.revoke_tokens(user)
   print("\nSuccessfully revoked all tokens for user with ID: " + user.identifier)

   client.delete_user(user)
   print("\nDeleted the user with ID: " + user.identifier)
except Exception as ex:
   print('Exception:')
   print(ex)
